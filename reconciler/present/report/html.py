"""The report page: one HTML document with inline CSS and SVG, nothing loaded from anywhere.

Owns: the page's stylesheet and turning `ReportData` into the rows and cards the Jinja2
template (`templates/report.html.j2`, autoescaped) lays out: summary, generations,
cost, failed generations, failed runs, orphans, last runs. A Content-Security-Policy
meta tag forbids every network fetch, so even a future edit that adds a URL by mistake
loads nothing. Must not: emit script, or mark anything safe but the SVG charts (which
`svg` builds from escaped values). The only Jinja2 user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from reconciler.model import generation_failed
from reconciler.present.formatting import human_time, money
from reconciler.present.report.data import ReportData
from reconciler.present.report.svg import cost_chart, timeline
from reconciler.present.report.tables import age

CSS = """
:root { color-scheme: light; --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #f9fafb; }
header { padding: 20px 32px 12px; background: #111827; color: #f9fafb; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header p { margin: 4px 0 0; color: #d1d5db; }
main { padding: 8px 32px 32px; max-width: 1100px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 16px 20px; margin-top: 16px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.summary { display: flex; gap: 16px; flex-wrap: wrap; margin-top: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px;
        padding: 10px 16px; min-width: 160px; }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.result-ok, .result-changes, .result-no-op { color: #15803d; }
.result-failed, .result-refused, .result-interrupted { color: #b91c1c; font-weight: 600; }
.kind { font-family: ui-monospace, monospace; font-size: 12px; }
.chart { display: block; max-width: 100%; height: auto; }
.chart .grid { stroke: var(--line); stroke-width: 1; }
.chart .axis { fill: var(--muted); font-size: 11px; }
.chart .label { fill: var(--ink); font-size: 12px; }
.chart .legend { fill: var(--ink); font-size: 12px; }
.chart .gen { fill: #fff; font-size: 11px; font-weight: 600; pointer-events: none; }
.chart .empty { fill: var(--muted); font-size: 13px; }
.seg-creating { fill: #93c5fd; }
.seg-active { fill: #16a34a; }
.seg-standby { fill: #f59e0b; }
.seg-failed { fill: #dc2626; }
.keys { display: flex; gap: 14px; font-size: 12px; color: var(--muted); margin-top: 6px; }
.keys i { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 4px; vertical-align: -1px; }
"""

# No network at all: the page is self-contained by construction and by policy.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
FAILED_RESULTS = ("failed", "refused", "interrupted")
KEYS = (("creating", "#93c5fd"), ("active", "#16a34a"), ("standby", "#f59e0b"),
        ("failed", "#dc2626"))  # fmt: skip

_TEMPLATES = Environment(
    loader=PackageLoader("reconciler.present.report", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.globals["zip"] = zip


def _span(css_class: str, text: str) -> Markup:
    """A styled cell: the class is ours, the text is escaped."""
    return Markup('<span class="{}">{}</span>').format(css_class, text)


def _orphan_rows(data: ReportData) -> list[list[Any]]:
    rows = []
    for o in data.orphans:
        where = "/".join(str(o[k]) for k in ("env", "service") if o.get(k))
        if o.get("generation") is not None:
            where += f" g{o['generation']}"
        rows.append([
            _span("kind", o["kind"]), o.get("instance") or "-",
            where or o.get("state") or "-", age(o.get("age_seconds")), money(o.get("cost")),
            _span("muted", o["action"]),
        ])  # fmt: skip
    return rows


def _result(run: dict[str, Any]) -> Markup:
    result = str(run.get("result") or "running")
    return _span(f"result-{result}", result)


def _counts(run: dict[str, Any]) -> str:
    counts = run.get("counts") or {}
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if not k.startswith("drift:"))


def _run_rows(runs: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [
        [str(run["id"]), human_time(run.get("started_at")), run.get("command") or "",
         (run.get("commit") or "-")[:10], _result(run), _counts(run) or "-",
         _span("muted", (run.get("error") or "")[:300])]
        for run in runs
    ]  # fmt: skip


def _failed(row: dict[str, Any]) -> bool:
    return generation_failed(str(row.get("state")), row.get("reason"))


def _failed_generation_rows(data: ReportData) -> list[list[Any]]:
    failed = sorted(
        (r for r in data.generations if _failed(r)),
        key=lambda r: r.get("retired_at") or r.get("created_at") or "",
        reverse=True,
    )
    return [
        [f"{r['env']}/{r['service']}", f"g{r['number']}", r.get("image") or "-",
         human_time(r.get("retired_at") or r.get("destroyed_at") or r.get("created_at")),
         _span("muted", str(r.get("reason") or "no reason recorded")[:500]),
         money(r.get("cost"))]
        for r in failed
    ]  # fmt: skip


def render_report(data: ReportData) -> str:
    orphan_cost = sum(o.get("cost") or 0.0 for o in data.orphans)
    live = sum(row.get("instances_live") or 0 for row in data.generations)
    failed_runs = [r for r in data.failed_runs if r.get("result") in FAILED_RESULTS]
    if data.observed_at is None:
        orphans_note = "No observation recorded yet."
    else:
        orphans_note = f"As observed by the last pass at {human_time(data.observed_at)}."
    page = _TEMPLATES.get_template("report.html.j2").render(
        csp=CSP,
        css=CSS,
        period=f"{data.start:%Y-%m-%d} to {human_time(data.now)}",
        cards=[
            (money(data.total_cost), f"cost, last {(data.now - data.start).days} days"),
            (str(live), "instances running"),
            (str(len(data.orphans)), "orphans"),
            (money(orphan_cost), "orphans' cost so far"),
            (str(len(_failed_generation_rows(data))), "failed generations"),
            (str(len(failed_runs)), "failed runs"),
        ],
        # Built by svg.py from escaped values: the only markup passed through as is.
        timeline=Markup(timeline(data.generations, start=data.start, now=data.now)),
        cost_chart=Markup(cost_chart(data.cost_by_day, start=data.start, now=data.now)),
        keys=KEYS,
        failed_headers=[("service", False), ("generation", False), ("image", False),
                        ("failed at", False), ("why", False), ("cost", True)],
        failed_generations=_failed_generation_rows(data),
        failed_run_headers=[("run", True), ("started", False), ("command", False),
                            ("commit", False), ("result", False), ("actions", False),
                            ("error", False)],
        failed_runs=_run_rows(failed_runs),
        orphans_note=orphans_note,
        orphan_headers=[("kind", False), ("instance", False), ("where", False),
                        ("age", True), ("cost so far", True), ("what to do", False)],
        orphans=_orphan_rows(data),
        run_headers=[("run", True), ("started", False), ("command", False),
                     ("commit", False), ("result", False), ("actions", False),
                     ("error", False)],
        runs=_run_rows(data.runs),
    )  # fmt: skip
    return page
