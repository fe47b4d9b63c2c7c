"""Alerts: thresholds of the predecessor and security findings, firing on transitions, never once per poll.

A metric of an agent *fires* when its value crosses its threshold and *clears* only once it is back below
``threshold * (1 - thresholds.hysteresis)``, so a value hovering at the edge does not flap. While firing, a
move from ``warning`` to ``critical`` fires again (an escalation); nothing else repeats.

Metrics and thresholds (names of the predecessor's ``thresholds.*``): every metric of
:mod:`storage.catalog` that declares a threshold, with its rule for the critical level:

- ``halfway`` (``cpu_usage``, ``memory_usage``, ``disk_usage``: percent): warning at the threshold,
  critical halfway between it and the metric's upper bound;
- ``double`` (``system_load``, the 1-minute load average): warning at the threshold, critical at twice it;
- ``hardware`` (``cpu_temperature``): the configured threshold or, when unset, the hardware's own ``high``
  limit that the agent reports (70 C when it reports none); critical at the hardware's ``critical`` limit
  (threshold + 15 C when unknown). A host without a sensor raises nothing;
- ``threat_level``: fires at ``thresholds.threat_level`` or above; severity follows the level;
- ``certificate_expiry``: the certificate an agent presented in the poll's handshake has at most
  ``thresholds.certificate_expiry_warning_days`` left (warning), or ``..._critical_days`` (critical);
  it clears once a renewed certificate has more;
- each security finding, identified by what it is -- its kind and the cause's evidence (the executable's
  path, the SSH source address, the port and process), never the PID or the user, so that one binary run
  by many processes, or a brute force trying many user names, fires once -- fires when it appears and
  clears when the agent stops reporting it, carrying its ATT&CK technique; a finding the agent reports
  as acknowledged (``evidence.acknowledged``, :mod:`secure_agent.probes.acknowledge`) fires nothing;
- ``agent_state``: an agent that stops answering fires (critical for a rejected certificate, which is what
  an impostor looks like: ATT&CK T1557, Adversary-in-the-Middle) and clears on its first good poll;
- ``audit_chain``: an agent's audit trail does not continue what the collector holds (:mod:`.audittrail`):
  critical, ATT&CK T1070 (Indicator Removal), fired at every break with what was expected and what came, and
  cleared only once ``audit_fetch.alert_hold`` seconds passed without another.

What is firing outlives the process: :meth:`AlertEngine.export` and :meth:`AlertEngine.restore` hand it to
and from :mod:`.alertstate`, and :attr:`AlertEngine.revision` says when it changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from pki.validity import expiry_limits
from storage.catalog import Metric, with_thresholds
from storage.escape import escape
from storage.models import AgentState, Alert, Finding, Sample, Severity
from storage.thresholds import DEFAULT_TEMPERATURE, TEMPERATURE_CRITICAL_MARGIN, Thresholds

LEVELS = with_thresholds()
"""The metrics compared with a threshold (storage.catalog), in the catalog's order."""
MAX_MESSAGE = 512
IMPOSTOR_TECHNIQUE = "T1557"
INDICATOR_REMOVAL_TECHNIQUE = "T1070"
AUDIT_CHAIN = "audit_chain"
CERTIFICATE_EXPIRY = "certificate_expiry"
_LEVEL_RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}
_FINDING_SEVERITY: dict[str, Severity] = {"low": "info", "medium": "warning", "high": "critical"}
_SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
_IDENTITY_KEYS = ("path", "address", "port", "exe", "process", "name", "local", "remote")
_ACKNOWLEDGED = "acknowledged"


class _Active(NamedTuple):
    severity: Severity
    clear_below: float | None  # None: below the threshold in force then, times (1 - hysteresis)


FiringState = dict[str, dict[str, Severity]]
"""What is firing: agent -> metric -> severity (what :mod:`.alertstate` keeps across restarts)."""


_METRIC_CACHE: dict[tuple[object, ...], str] = {}
_METRIC_CACHE_SIZE = 10_000


def finding_metric(finding: Finding) -> str:
    """A stable name for one finding: its kind and a digest of its identifying evidence."""
    evidence = finding.evidence
    key = (finding.kind, finding.summary, *(evidence.get(k) for k in _IDENTITY_KEYS))
    metric = _METRIC_CACHE.get(key)
    if metric is None:
        if len(_METRIC_CACHE) >= _METRIC_CACHE_SIZE:
            _METRIC_CACHE.clear()
        metric = _METRIC_CACHE[key] = _finding_metric(finding)
    return metric


def _finding_metric(finding: Finding) -> str:
    identity = [finding.kind]
    for key in _IDENTITY_KEYS:
        if key in finding.evidence:
            identity.append(f"{key}={finding.evidence[key]}")
    if len(identity) == 1:
        identity.append(finding.summary)
    digest = hashlib.sha256("\x00".join(identity).encode("utf-8", "replace")).hexdigest()[:10]
    return f"security.{finding.kind[:40]}.{digest}"


class AlertEngine:
    """Keeps, per agent and metric, whether an alert is firing; turns samples and poll states into alerts."""

    def __init__(self, thresholds: Thresholds) -> None:
        self._thresholds = thresholds
        self._keep = 1.0 - thresholds.hysteresis
        self._active: dict[str, dict[str, _Active]] = {}
        self._revision = 0
        self._audit_breaks: dict[str, float] = {}  # agent -> time of its last audit chain break

    @property
    def revision(self) -> int:
        """Counts the changes to what is firing; equal revisions mean equal :meth:`export` output."""
        return self._revision

    def _put(self, active: dict[str, _Active], metric: str, entry: _Active) -> None:
        if active.get(metric) != entry:
            active[metric] = entry
            self._revision += 1

    def _drop(self, active: dict[str, _Active], metric: str) -> None:
        del active[metric]
        self._revision += 1

    def export(self) -> FiringState:
        """A copy of what is firing, for every agent with something firing."""
        return {
            agent: {metric: entry.severity for metric, entry in active.items()}
            for agent, active in self._active.items()
            if active
        }

    def restore(self, state: Mapping[str, Mapping[str, Severity]]) -> None:
        """Take over what an earlier run left firing, so it does not fire a second time.

        A restored alert clears below its threshold *now* times (1 - hysteresis): a threshold changed in
        the configuration between the runs applies to the alerts already firing too.
        """
        self._active = {agent: {m: _Active(s, None) for m, s in metrics.items()} for agent, metrics in state.items()}
        self._revision += 1

    def firing(self, agent: str) -> dict[str, Severity]:
        """The metrics of ``agent`` that are firing now, with their severity."""
        return {metric: active.severity for metric, active in self._active.get(agent, {}).items()}

    # -- samples ---------------------------------------------------------------------------------
    def evaluate(self, sample: Sample) -> list[Alert]:
        """The alerts one good sample causes (usually none)."""
        t = self._thresholds
        active = self._active.setdefault(sample.agent, {})
        alerts: list[Alert] = []
        for metric in LEVELS:
            value = getattr(sample, metric.name)
            if metric.threshold is None or value is None:
                continue
            limits = self._limits(metric, t.limit(metric), sample)
            if limits is None:
                continue
            threshold, critical = limits
            unit = " C" if metric.unit == "°C" else metric.unit
            self._level(alerts, active, sample, metric.threshold.key, value, threshold, critical, unit=unit)
        self._threat(alerts, active, sample)
        self._expiry(alerts, active, sample)
        self._findings(alerts, active, sample)
        return alerts

    def evaluate_own_material(
        self, name: str, timestamp: float, lefts: Sequence[tuple[str, float, bool, float | None]]
    ) -> list[Alert]:
        """``certificate_expiry`` of the collector ``name`` itself: its certificate, the CA, the CRL.

        ``lefts``: (what, days left, is a CRL, lifetime in days or None) of each; one alert for the
        collector, as bad as the worst. A CRL is re-signed every few weeks (30 days' validity by default),
        so it warns only at the critical days and is critical in its last day. A certificate's limits
        shrink with a short lifetime (:func:`pki.validity.expiry_limits`).
        """
        close: list[tuple[str, float, Severity]] = []
        for what, left, crl, lifetime in lefts:
            warning, critical = self._expiry_limits(lifetime)
            warn_at, critical_at = (critical, 1.0) if crl else (warning, critical)
            if left <= warn_at:
                close.append((what, left, "critical" if left <= critical_at else "warning"))
        active = self._active.setdefault(name, {})
        alerts: list[Alert] = []
        if close:
            worst = max((entry[2] for entry in close), key=_SEVERITY_RANK.__getitem__)
            said = "; ".join(f"{what} in {left:.1f} days" for what, left, _ in close)
            soonest = min(left for _, left, _ in close)
            self._expiry_level(alerts, active, name, timestamp, soonest, f"expiring: {said}", worst)
        else:
            self._expiry_level(alerts, active, name, timestamp, None, "renewed")
        return alerts

    def _expiry_limits(self, lifetime: float | None) -> tuple[float, float]:
        return expiry_limits(
            self._thresholds.certificate_expiry_warning_days, self._thresholds.certificate_expiry_critical_days,
            lifetime,
        )

    def _expiry(self, alerts: list[Alert], active: dict[str, _Active], sample: Sample) -> None:
        """``certificate_expiry``: the certificate the agent presented in this poll's handshake."""
        left = sample.cert_days_left
        if left is None:
            return
        limits = self._expiry_limits(sample.cert_lifetime_days)
        self._expiry_level(
            alerts, active, sample.agent, sample.timestamp, left, f"the agent's certificate expires in {left:.1f} days",
            limits=limits,
        )

    def _expiry_level(
        self,
        alerts: list[Alert],
        active: dict[str, _Active],
        agent: str,
        timestamp: float,
        left: float | None,
        said: str,
        severity: Severity | None = None,
        limits: tuple[float, float] | None = None,
    ) -> None:
        """Fire, escalate or clear ``certificate_expiry`` for ``left`` days (None: nothing close any more);
        ``severity`` when the caller judged it (the collector's own material), else from ``limits`` (the
        certificate's warning and critical days) or the thresholds."""
        warning, critical = limits or self._expiry_limits(None)
        current = active.get(CERTIFICATE_EXPIRY)
        if left is not None and (severity is not None or left <= warning):
            if severity is None:
                severity = "critical" if left <= critical else "warning"
            if current is None or _SEVERITY_RANK[severity] > _SEVERITY_RANK[current.severity]:
                message = f"{said} (warning at {warning:.3g} days, critical at {critical:.3g})"
                alerts.append(make_alert(agent, timestamp, CERTIFICATE_EXPIRY, left, warning, severity, message))
            self._put(active, CERTIFICATE_EXPIRY, _Active(severity, None))
        elif current is not None:  # renewed
            self._drop(active, CERTIFICATE_EXPIRY)
            message = "renewed" if left is None else f"renewed: expires in {left:.0f} days"
            alerts.append(make_alert(agent, timestamp, CERTIFICATE_EXPIRY, left, warning, "info", message, "cleared"))

    @staticmethod
    def _limits(metric: Metric, configured: float | None, sample: Sample) -> tuple[float, float] | None:
        """The warning and critical levels of ``metric`` for ``sample`` (storage.catalog's rule)."""
        assert metric.threshold is not None  # noqa: S101 - LEVELS holds only metrics with a threshold
        rule = metric.threshold.critical
        if rule == "hardware":  # temperature: the configured limit, else the hardware's own
            threshold = configured
            if threshold is None:
                threshold = sample.temperature_high if sample.temperature_high is not None else DEFAULT_TEMPERATURE
            critical = sample.temperature_critical
            if critical is None or critical <= threshold:
                critical = threshold + TEMPERATURE_CRITICAL_MARGIN
            return threshold, critical
        if configured is None:
            return None  # no threshold configured and none by default: never alerted
        if rule == "double" or metric.le is None:
            return configured, 2 * configured
        return configured, configured + (metric.le - configured) / 2

    def _level(
        self,
        alerts: list[Alert],
        active: dict[str, _Active],
        sample: Sample,
        metric: str,
        value: float | None,
        threshold: float,
        critical: float,
        *,
        unit: str,
    ) -> None:
        if value is None:
            return  # no reading (no sensor, metric disabled): no transition either way
        current = active.get(metric)
        if value >= threshold:
            severity: Severity = "critical" if value >= critical else "warning"
            if current is None or _SEVERITY_RANK[severity] > _SEVERITY_RANK[current.severity]:
                message = f"{metric} {value:g}{unit} at or above {threshold:g}{unit}"
                alerts.append(make_alert(sample.agent, sample.timestamp, metric, value, threshold, severity, message))
                self._put(active, metric, _Active(severity, threshold * self._keep))
        elif current is not None:
            clear_below = current.clear_below if current.clear_below is not None else threshold * self._keep
            if value < clear_below:
                self._drop(active, metric)
                message = f"{metric} {value:g}{unit} back below {clear_below:g}{unit}"
                alerts.append(
                    make_alert(sample.agent, sample.timestamp, metric, value, threshold, "info", message, "cleared")
                )

    def _threat(self, alerts: list[Alert], active: dict[str, _Active], sample: Sample) -> None:
        rank = _LEVEL_RANK[sample.threat_level]
        limit = _LEVEL_RANK[self._thresholds.threat_level]
        current = active.get("threat_level")
        if rank >= limit and rank > 0:
            severity = _FINDING_SEVERITY[sample.threat_level]
            if current is None or _SEVERITY_RANK[severity] > _SEVERITY_RANK[current.severity]:
                message = f"threat level {sample.threat_level} ({sample.security_issues} findings)"
                alert = make_alert(sample.agent, sample.timestamp, "threat_level", rank, limit, severity, message)
                alerts.append(alert)
            self._put(active, "threat_level", _Active(severity, None))
        elif current is not None:
            self._drop(active, "threat_level")
            message = f"threat level back to {sample.threat_level}"
            alerts.append(
                make_alert(sample.agent, sample.timestamp, "threat_level", rank, limit, "info", message, "cleared")
            )

    def _findings(self, alerts: list[Alert], active: dict[str, _Active], sample: Sample) -> None:
        seen: set[str] = set()
        for finding in sample.findings:
            if _ACKNOWLEDGED in finding.evidence:
                continue  # a known cause the operator accepted: shown on the agent, never alerted
            metric = finding_metric(finding)
            if metric in seen:
                continue
            seen.add(metric)
            if metric not in active:
                severity = _FINDING_SEVERITY[finding.severity]
                self._put(active, metric, _Active(severity, None))
                count = finding.evidence.get("count")
                value = float(count) if isinstance(count, int | float) and not isinstance(count, bool) else None
                alerts.append(
                    make_alert(
                        sample.agent,
                        sample.timestamp,
                        metric,
                        value,
                        None,
                        severity,
                        f"{finding.kind}: {escape(finding.summary, MAX_MESSAGE)}",
                        technique=finding.technique,
                    )
                )
        for metric in [m for m in active if m.startswith("security.") and m not in seen]:
            self._drop(active, metric)
            alerts.append(
                make_alert(
                    sample.agent, sample.timestamp, metric, None, None, "info", "finding no longer reported", "cleared"
                )
            )

    # -- poll states -----------------------------------------------------------------------------
    def evaluate_state(self, agent: str, state: AgentState, timestamp: float, detail: str = "") -> list[Alert]:
        """The ``agent_state`` alert a poll outcome causes: fire when an agent stops answering, clear when back."""
        active = self._active.setdefault(agent, {})
        current = active.get("agent_state")
        if state == "up":
            if current is None:
                return []
            self._drop(active, "agent_state")
            return [make_alert(agent, timestamp, "agent_state", None, None, "info", "agent answers again", "cleared")]
        severity: Severity = "critical" if state in ("tls_failure", "auth_refused") else "warning"
        if current is not None and _SEVERITY_RANK[severity] <= _SEVERITY_RANK[current.severity]:
            return []
        self._put(active, "agent_state", _Active(severity, None))
        technique = IMPOSTOR_TECHNIQUE if state == "tls_failure" else None
        return [
            make_alert(
                agent,
                timestamp,
                "agent_state",
                None,
                None,
                severity,
                escape(f"{state}: {detail}", MAX_MESSAGE),
                technique=technique,
            )
        ]

    # -- audit trails ------------------------------------------------------------------------------
    def evaluate_audit(self, agent: str, timestamp: float, breaks: Sequence[str], hold: float) -> list[Alert]:
        """``audit_chain``: one critical alert per poll that found breaks (their messages joined); cleared
        once ``hold`` seconds passed since the last break (a restored alert's hold starts at the restart)."""
        active = self._active.setdefault(agent, {})
        if breaks:
            self._audit_breaks[agent] = timestamp
            self._put(active, AUDIT_CHAIN, _Active("critical", None))
            message = breaks[0] if len(breaks) == 1 else f"{breaks[0]} (and {len(breaks) - 1} more breaks)"
            return [
                make_alert(
                    agent, timestamp, AUDIT_CHAIN, float(len(breaks)), None, "critical", escape(message, MAX_MESSAGE),
                    technique=INDICATOR_REMOVAL_TECHNIQUE,
                )
            ]
        if AUDIT_CHAIN not in active:
            return []
        since = self._audit_breaks.setdefault(agent, timestamp)
        if timestamp - since < hold:
            return []
        self._drop(active, AUDIT_CHAIN)
        del self._audit_breaks[agent]
        message = f"no audit chain break for {hold:g} s"
        return [make_alert(agent, timestamp, AUDIT_CHAIN, None, None, "info", message, "cleared")]

    def forget(self, agents: Iterable[str]) -> None:
        for agent in agents:
            if self._active.pop(agent, None):
                self._revision += 1


def make_alert(
    agent: str,
    timestamp: float,
    metric: str,
    value: float | None,
    threshold: float | None,
    severity: Severity,
    message: str,
    state: str = "firing",
    *,
    technique: str | None = None,
) -> Alert:
    return Alert(
        agent=agent,
        timestamp=timestamp,
        metric=metric,
        value=value,
        threshold=threshold,
        severity=severity,
        state="cleared" if state == "cleared" else "firing",
        technique=technique,
        message=message[:MAX_MESSAGE],
    )
