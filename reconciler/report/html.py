"""The report page: one HTML document with inline CSS and SVG, nothing loaded from anywhere.

Owns: the page's layout, its stylesheet and its tables (orphans, last runs). A
Content-Security-Policy meta tag forbids every network fetch, so even a future edit
that adds a URL by mistake loads nothing. Must not: emit script, or text from the
ledger that has not passed through `html.escape`.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from reconciler.report.data import ReportData
from reconciler.report.svg import cost_chart, timeline
from reconciler.report.tables import age, money, short_time

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


def _table(
    table_id: str, headers: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]], empty: str
) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}-empty">{escape(empty)}</p>'
    head = "".join(f'<th class="num">{escape(h)}</th>' if num else f"<th>{escape(h)}</th>"
                   for h, num in headers)  # fmt: skip
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell}</td>' if num else f"<td>{cell}</td>"
            for (_, num), cell in zip(headers, row, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _orphans(data: ReportData) -> str:
    rows = []
    for o in data.orphans:
        where = "/".join(str(o[k]) for k in ("env", "service") if o.get(k))
        if o.get("generation") is not None:
            where += f" g{o['generation']}"
        rows.append([
            f'<span class="kind">{escape(o["kind"])}</span>',
            escape(o.get("instance") or "-"),
            escape(where or o.get("state") or "-"),
            escape(age(o.get("age_seconds"))),
            escape(money(o.get("cost"))),
            f'<span class="muted">{escape(o["action"])}</span>',
        ])  # fmt: skip
    if data.observed_at is None:
        note = "No observation recorded yet."
    else:
        note = f"As observed by the last pass at {data.observed_at:%Y-%m-%d %H:%M} UTC."
    headers = [("kind", False), ("instance", False), ("where", False), ("age", True),
               ("cost so far", True), ("what to do", False)]  # fmt: skip
    return f'<p class="muted">{escape(note)}</p>' + _table(
        "orphans", headers, rows, "No orphans: everything running is desired."
    )


def _runs(runs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        result = run.get("result") or "running"
        counts = ", ".join(
            f"{n} {k}" for k, n in sorted((run.get("counts") or {}).items())
            if not k.startswith("drift:")
        )  # fmt: skip
        rows.append([
            escape(str(run["id"])),
            escape(short_time(run.get("started_at"))),
            escape(run.get("command") or ""),
            escape((run.get("commit") or "-")[:10]),
            f'<span class="result-{escape(result)}">{escape(result)}</span>',
            escape(counts or "-"),
            f'<span class="muted">{escape((run.get("error") or "")[:300])}</span>',
        ])  # fmt: skip
    headers = [("run", True), ("started", False), ("command", False), ("commit", False),
               ("result", False), ("actions", False), ("error", False)]  # fmt: skip
    return _table("runs", headers, rows, "No runs recorded yet.")


def render_report(data: ReportData) -> str:
    orphan_cost = sum(o.get("cost") or 0.0 for o in data.orphans)
    live = sum(row.get("instances_live") or 0 for row in data.generations)
    cards = [
        (money(data.total_cost), f"cost, last {(data.now - data.start).days} days"),
        (str(live), "instances running"),
        (str(len(data.orphans)), "orphans"),
        (money(orphan_cost), "orphans' cost so far"),
    ]
    summary = "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>'
                      for v, k in cards)  # fmt: skip
    keys = "".join(
        f'<span><i class="{cls}" style="background:{colour}"></i>{name}</span>'
        for name, cls, colour in (
            ("creating", "seg-creating", "#93c5fd"),
            ("active", "seg-active", "#16a34a"),
            ("standby", "seg-standby", "#f59e0b"),
            ("failed", "seg-failed", "#dc2626"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reconciler ledger report</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>reconciler ledger report</h1>
<p>{escape(f"{data.start:%Y-%m-%d} to {data.now:%Y-%m-%d %H:%M} UTC")}</p></header>
<main>
<div class="summary" id="summary">{summary}</div>
<section id="generations"><h2>Generations per service</h2>
{timeline(data.generations, start=data.start, now=data.now)}
<div class="keys">{keys}</div></section>
<section id="cost"><h2>Cost per day, by service</h2>
{cost_chart(data.cost_by_day, start=data.start, now=data.now)}</section>
<section id="orphans-section"><h2>Orphans</h2>{_orphans(data)}</section>
<section id="runs-section"><h2>Last runs</h2>{_runs(data.runs)}</section>
</main>
</body>
</html>
"""
