"""The ``thresholds`` section of the collector's configuration, built from storage.catalog: one set of defaults.

The collector validates the section strictly (:class:`Thresholds`: an unknown key is a mistake); viz reads the
same file for the lines it draws and ignores what it does not draw (:class:`LenientThresholds`). Both are
made here from the declarations, so a default or a bound is written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from storage.catalog import METRICS, Metric

DEFAULT_TEMPERATURE = 70.0
"""The predecessor's temperature threshold, used when neither the config nor the agent gives one."""
TEMPERATURE_CRITICAL_MARGIN = 15.0
"""Critical this far above a temperature threshold when the hardware reports no critical limit."""
ThreatThreshold = Literal["low", "medium", "high"]


def _fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for metric in METRICS:
        if metric.threshold is None:
            continue
        limit = metric.threshold
        kind: Any = float if limit.default is not None else float | None
        fields[limit.key] = (kind, Field(default=limit.default, ge=limit.ge, le=limit.le))
    fields["threat_level"] = (ThreatThreshold, "medium")
    # certificate_expiry: the days left on a certificate at which it warns, then is critical
    fields["certificate_expiry_warning_days"] = (float, Field(default=30.0, ge=0, le=3650))
    fields["certificate_expiry_critical_days"] = (float, Field(default=7.0, ge=0, le=3650))
    # an alert clears only once the value is this fraction below its threshold (no flapping at the edge)
    fields["hysteresis"] = (float, Field(default=0.05, ge=0, le=0.5))
    return fields


class _Base(BaseModel):
    def limit(self, metric: Metric) -> float | None:
        """The configured threshold of ``metric`` (None: none configured, or the metric has none)."""
        if metric.threshold is None:
            return None
        value = getattr(self, metric.threshold.key)
        return None if value is None else float(value)


class _Strict(_Base):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Lenient(_Base):
    model_config = ConfigDict(frozen=True, extra="ignore")


if TYPE_CHECKING:

    class Thresholds(_Base):
        threat_level: ThreatThreshold = "medium"
        hysteresis: float = 0.05
        certificate_expiry_warning_days: float = 30.0
        certificate_expiry_critical_days: float = 7.0

        def __getattr__(self, name: str) -> Any: ...

    class LenientThresholds(Thresholds): ...

else:
    Thresholds = create_model("Thresholds", __base__=_Strict, __module__=__name__, **_fields())
    LenientThresholds = create_model("LenientThresholds", __base__=_Lenient, __module__=__name__, **_fields())
