"""``index.html``: a self-contained page with the table of agents and the plots.

Self-contained means: inline CSS, no script at all, no fonts or anything else from the network, and
the plots linked by relative file names, so the directory can be copied or served as it is. A
Content-Security-Policy in the page forbids everything else, as a second line behind escaping.
Every string that came from storage (agent names, states, alert metrics and messages: agents are
untrusted) is escaped with :func:`html.escape`, attributes included.

The table puts what an operator looks at first in one row per agent, most trouble first: state (and
how long ago it was last seen), threat level, the latest CPU, memory, swap, disk, load, temperature
and SSH failures (over-threshold values marked, "not monitored" where the host has no SSH log source),
the sample's age, and open alerts. With ``refresh`` the page reloads itself through
``<meta http-equiv="refresh">``, which needs no script, so the CSP stays ``script-src 'none'``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

from storage.catalog import columns
from viz.plots import PlotSpec
from viz.series import Window
from viz.summary import AgentRow, OpenAlert

MAX_ALERTS_SHOWN = 5
"""Open alerts listed per agent; the rest are counted."""

CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #212121; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.meta { color: #616161; margin: 0; }
table { border-collapse: collapse; background: #fff; font-size: .9rem; }
th, td { border: 1px solid #e0e0e0; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #eeeeee; }
td.num { text-align: right; white-space: nowrap; }
td.over { background: #ffebee; color: #b71c1c; font-weight: 600; }
td.none { color: #9e9e9e; text-align: right; }
ul.alerts { margin: 0; padding-left: 1rem; }
.state-up { color: #2e7d32; } .state-bad { color: #c62828; font-weight: 600; } .state-unknown { color: #757575; }
.threat-none { color: #2e7d32; } .threat-low { color: #f9a825; }
.threat-medium { color: #ef6c00; font-weight: 600; } .threat-high { color: #c62828; font-weight: 700; }
.sev-critical { color: #c62828; font-weight: 600; } .sev-warning { color: #ef6c00; } .sev-info { color: #1565c0; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { color: #616161; font-size: .9rem; }
nav a { margin-right: 1rem; }
"""


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_age(seconds: float | None, now: float) -> str:
    if seconds is None:
        return ""
    age = max(now - seconds, 0.0)
    if age < 120:
        return f"{age:.0f} s ago"
    if age < 7200:
        return f"{age / 60:.0f} min ago"
    if age < 172_800:
        return f"{age / 3600:.1f} h ago"
    return f"{age / 86_400:.1f} d ago"


def _state_class(state: str) -> str:
    if state == "up":
        return "state-up"
    return "state-unknown" if state == "unknown" else "state-bad"


def _alert_item(alert: OpenAlert) -> str:
    severity = escape(alert.severity)
    numbers = ""
    if alert.value is not None:
        numbers = f" {alert.value:g}"
        if alert.threshold is not None:
            numbers += f" (threshold {alert.threshold:g})"
    message = f": {escape(alert.message)}" if alert.message else ""
    return (
        f'<li><span class="sev-{severity}">{severity}</span> {escape(alert.metric)}{numbers}{message}'
        f' <span class="meta">since {escape(format_time(alert.since))}</span></li>'
    )


def _alerts_cell(alerts: tuple[OpenAlert, ...]) -> str:
    if not alerts:
        return '<td class="num">0</td>'
    items = "".join(_alert_item(alert) for alert in alerts[:MAX_ALERTS_SHOWN])
    more = len(alerts) - MAX_ALERTS_SHOWN
    if more > 0:
        items += f"<li>+{more} more</li>"
    return f'<td><strong>{len(alerts)}</strong><ul class="alerts">{items}</ul></td>'


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 agent``, ``2 agents``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


# (reading, column heading, format): the latest-readings columns of the table, in order (storage.catalog)
COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    (metric.name, metric.column.heading, metric.column.format) for metric in columns() if metric.column is not None
)
MISSING = {metric.name: metric.column.missing for metric in columns() if metric.column is not None}


def _reading_cell(row: AgentRow, name: str, shape: str, limits: Mapping[str, float]) -> str:
    value = row.readings.get(name)
    if value is None:
        text = MISSING[name] if row.sampled_at is not None else ""
        return f'<td class="none">{escape(text)}</td>'
    over = name in row.breaches
    title = f' title="threshold {limits[name]:g}"' if over and name in limits else ""
    return f'<td class="num{" over" if over else ""}"{title}>{escape(shape.format(value))}</td>'


def _agent_row(row: AgentRow, now: float, limits: Mapping[str, float]) -> str:
    age = format_age(row.last_seen, now)
    seen = f'<br><span class="meta">seen {escape(age)}</span>' if age else '<br><span class="meta">never seen</span>'
    detail = f' <span class="meta">{escape(row.detail)}</span>' if row.detail and row.state != "up" else ""
    threat = escape(row.threat_level)
    readings = "".join(_reading_cell(row, name, shape, limits) for name, _, shape in COLUMNS)
    sampled = escape(format_age(row.sampled_at, now)) or "–"
    return (
        f"<tr><td>{escape(row.agent)}</td>"
        f'<td><span class="{_state_class(row.state)}">{escape(row.state)}</span>{detail}{seen}</td>'
        f'<td><span class="threat-{threat}">{threat}</span></td>{readings}'
        f'<td class="num" title="{escape(format_time(row.sampled_at))}">{sampled}</td>'
        f"{_alerts_cell(row.open_alerts)}</tr>"
    )


def _figure(spec: PlotSpec) -> str:
    name = escape(spec.name)
    width, height = spec.pixels
    return (
        f'<figure id="plot-{name}"><a href="{name}.png"><img src="{name}.png" width="{width}" '
        f'height="{height}" alt="{escape(spec.title)}"></a><figcaption>{escape(spec.title)}</figcaption></figure>'
    )


def render_index(rows: Sequence[AgentRow], plots: Sequence[PlotSpec], window: Window, agent: str | None,
                 now: float, *, refresh: int = 0, limits: Mapping[str, float] | None = None) -> str:
    """The whole page as text; ``refresh``: seconds after which it reloads itself (0: never)."""
    scope = f"agent {escape(agent)}" if agent is not None else plural(len(rows), "agent")
    down = sum(1 for row in rows if not row.answering)
    if down:
        scope += f", {plural(down, 'agent')} not answering"
    hours = (window.end - window.start) / 3600.0
    table = "".join(_agent_row(row, now, limits or {}) for row in rows)
    headings = "".join(f"<th>{escape(heading)}</th>" for _, heading, _ in COLUMNS)
    reload = f'<meta http-equiv="refresh" content="{int(refresh)}">\n' if refresh > 0 else ""
    refreshed = f"; reloads every {plural(int(refresh), 'second')}" if refresh > 0 else ""
    figures = "".join(_figure(spec) for spec in plots)
    links = "".join(f'<a href="#plot-{escape(spec.name)}">{escape(spec.title)}</a>' for spec in plots)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
{reload}<meta name="viewport" content="width=device-width, initial-scale=1">
<title>secure-monitor dashboard</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>secure-monitor dashboard</h1>
<p class="meta">{scope}; last {hours:g} h, {escape(format_time(window.start))} to {escape(format_time(window.end))};
generated {escape(format_time(now))}{refreshed}</p>
<nav><a href="#agents">Agents</a>{links}</nav>
</header>
<main>
<h2 id="agents">Agents</h2>
<table>
<thead><tr><th>Agent</th><th>State</th><th>Threat</th>{headings}<th>Sample age</th><th>Open alerts</th></tr></thead>
<tbody>
{table}
</tbody>
</table>
<h2>Plots</h2>
{figures}
</main>
</body>
</html>
"""
