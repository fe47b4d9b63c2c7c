"""Certificates close to expiry are seen where it matters: in every poll (issue 20, item 3).

The collector reads the validity of the certificate each agent presents in its handshake: the days left
are stored with every sample (file and MySQL, exported as ``secure_monitor_cert_days_left``), ``--once``
shows them under the warning threshold, and ``certificate_expiry`` fires as a warning at 30 days left and
as critical at 7 (``thresholds.certificate_expiry_warning_days`` / ``..._critical_days``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from secure_collector import cli
from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from storage.models import Sample
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

NOW = dt.datetime.now(dt.UTC)


YEAR = dt.timedelta(days=365)


def _agent_expiring(
    pki: TestPKI, start_agent: StartAgent, name: str, days: float, lifetime: dt.timedelta = YEAR
) -> tuple[str, str, int]:
    """An agent whose certificate of ``lifetime`` (a year: the offline flow's kind) has ``days`` left."""
    after = NOW + dt.timedelta(days=days)
    cert, key = pki.issue(
        name, "server", hosts=["localhost", "127.0.0.1"], not_before=after - lifetime, not_after=after, folder=name
    )
    agent = start_agent(pki, name, tls={"cert": str(cert), "key": str(key)})
    return name, agent.host, agent.port


def test_days_left_are_stored_shown_and_alerted_at_the_thresholds(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["soon", "month", "fine"]
    pki = make_pki(tmp_path / "pki", agents=[f"{n}=localhost,127.0.0.1" for n in names], collectors=["collector"])
    polled = [
        _agent_expiring(pki, start_agent, "soon", 5),
        _agent_expiring(pki, start_agent, "month", 20),
        _agent_expiring(pki, start_agent, "fine", 80),
    ]
    data = collector_data(pki, tmp_path, polled)
    capsys.readouterr()
    assert cli.main(["--config", str(write_config(tmp_path, data)), "--once"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "certificate expires in 4." in lines["soon"] or "certificate expires in 5.0" in lines["soon"]
    assert "certificate expires in 19." in lines["month"] or "certificate expires in 20.0" in lines["month"]
    assert "certificate" not in lines["fine"]

    store = read_store(load(data))
    samples = store.query_samples(*WIDE)
    left = dict(zip(samples["agent"], samples["cert_days_left"].astype(float), strict=True))
    assert 4.9 <= left["soon"] <= 5.0 and 79.9 <= left["fine"] <= 80.0
    alerts = store.query_alerts(*WIDE)
    fired = alerts[alerts["metric"] == "certificate_expiry"]
    assert dict(zip(fired["agent"], fired["severity"], strict=True)) == {"soon": "critical", "month": "warning"}


def test_a_renewing_deployment_s_short_certificates_warn_only_once_renewal_is_overdue(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    """30-day certificates (enrollment) renew at 2/3 of their life, 10 days left: at 20 or 12 days left
    nothing is wrong; a quarter of the lifetime left (7.5 days) is a renewal overdue, a tenth critical."""
    names = ["fresh", "due", "overdue", "late"]
    pki = make_pki(tmp_path / "pki", agents=[f"{n}=localhost,127.0.0.1" for n in names], collectors=["collector"])
    month = dt.timedelta(days=30)
    polled = [_agent_expiring(pki, start_agent, name, days, month)
              for name, days in zip(names, (20, 12, 6, 2), strict=True)]
    data = collector_data(pki, tmp_path, polled)
    assert cli.main(["--config", str(write_config(tmp_path, data)), "--once"]) == 0
    store = read_store(load(data))
    samples = store.query_samples(*WIDE)
    assert set(samples["cert_lifetime_days"].round(1)) == {30.0}  # stored beside the days left
    alerts = store.query_alerts(*WIDE)
    fired = alerts[alerts["metric"] == "certificate_expiry"]
    assert dict(zip(fired["agent"], fired["severity"], strict=True)) == {"overdue": "warning", "late": "critical"}
    assert "warning at 7.5 days, critical at 3" in str(fired["message"].iloc[0])


def test_the_thresholds_are_configurable_and_a_renewal_clears_the_alert() -> None:
    engine = AlertEngine(
        Thresholds.model_validate({"certificate_expiry_warning_days": 60, "certificate_expiry_critical_days": 14})
    )

    def sample(days: float, at: float) -> Sample:
        return Sample(agent="a", timestamp=at, cert_days_left=days)

    assert [(a.severity, a.state) for a in engine.evaluate(sample(50, 1.0))] == [("warning", "firing")]
    assert engine.evaluate(sample(49, 2.0)) == []  # still firing: said once
    assert [(a.severity, a.state) for a in engine.evaluate(sample(13, 3.0))] == [("critical", "firing")]
    assert [(a.severity, a.state) for a in engine.evaluate(sample(89, 4.0))] == [("info", "cleared")]
    assert engine.evaluate(Sample(agent="a", timestamp=5.0)) == []  # no handshake seen: nothing to judge


def test_the_collectors_own_certificate_close_to_expiry_is_alerted_before_a_poll_fails(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki", agents=["fine=localhost,127.0.0.1"], collectors=["collector"])
    agent = start_agent(pki, "fine")
    after = NOW + dt.timedelta(days=3)
    cert, key = pki.issue("collector", "client", not_before=after - YEAR, not_after=after, folder="short")
    data = collector_data(
        pki, tmp_path, [("fine", agent.host, agent.port)], tls={"cert": str(cert), "key": str(key)}
    )
    assert cli.main(["--config", str(write_config(tmp_path, data)), "--once"]) == 0
    alerts = read_store(load(data)).query_alerts(*WIDE)
    own = alerts[alerts["metric"] == "certificate_expiry"]
    assert list(zip(own["agent"], own["severity"], strict=True)) == [("collector", "critical")]
    message = str(own["message"].iloc[0])
    assert re.search(r"the collector's certificate in [23]\.\d days", message), message
    assert "CA" not in message and "CRL" not in message  # 10 years and 30 days left: not close
