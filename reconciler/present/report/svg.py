"""The report's two charts as inline SVG strings: generation timelines and cost per day.

Owns: geometry, axes and colours. Every text that came from the ledger passes
through `html.escape`. Must not: reference anything outside the document (no
external fonts, images or scripts); tooltips are SVG <title> elements, not script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

from reconciler.model import generation_failed

PALETTE = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#65a30d",
           "#db2777", "#4b5563", "#ca8a04")  # fmt: skip
PHASE_CLASS = {"creating": "seg-creating", "active": "seg-active", "standby": "seg-standby",
               "failed": "seg-failed"}  # fmt: skip

WIDTH = 960
LABEL_W = 170
ROW_H = 26


def _t(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _phases(row: dict[str, Any], now: datetime) -> list[tuple[str, datetime, datetime]]:
    """(phase, from, to) for one generation: creating, then active or failed, then standby."""
    created = _t(row.get("created_at"))
    if created is None:
        return []
    activated = _t(row.get("activated_at"))
    retired = _t(row.get("retired_at"))
    end = _t(row.get("destroyed_at")) or now
    failed = generation_failed(str(row.get("state")), row.get("reason"))
    phases: list[tuple[str, datetime, datetime]] = []
    if failed:
        phases.append(("failed", created, retired or end))
        return phases
    phases.append(("creating", created, activated or retired or end))
    if activated is not None:
        phases.append(("active", activated, retired or end))
    if retired is not None:
        phases.append(("standby", retired, end))
    return [(p, a, b) for p, a, b in phases if b > a]


def timeline(generations: Sequence[dict[str, Any]], *, start: datetime, now: datetime) -> str:
    services: dict[str, list[dict[str, Any]]] = {}
    for row in generations:
        services.setdefault(f"{row['env']}/{row['service']}", []).append(row)
    span = max((now - start).total_seconds(), 1.0)
    plot_w = WIDTH - LABEL_W - 10
    height = 40 + ROW_H * max(len(services), 1)

    def x(moment: datetime) -> float:
        offset = min(max((moment - start).total_seconds(), 0.0), span)
        return LABEL_W + plot_w * offset / span

    parts = [
        f'<svg id="timeline" class="chart" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" aria-label="Generations per service over time" '
        ">"
    ]
    for tick in _time_ticks(start, now):
        tx = x(tick)
        parts.append(
            f'<line class="grid" x1="{tx:.1f}" y1="14" x2="{tx:.1f}" y2="{height - 4}"/>'
            f'<text class="axis" x="{tx:.1f}" y="10" text-anchor="middle">'
            f"{tick:%m-%d}</text>"
        )
    if not services:
        parts.append(f'<text class="empty" x="{LABEL_W}" y="36">No generations yet.</text>')
    for n, (name, rows) in enumerate(sorted(services.items())):
        y = 22 + n * ROW_H
        parts.append(
            f'<text class="label" x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">'
            f"{escape(name)}</text>"
        )
        for row in rows:
            for phase, begin, end in _phases(row, now):
                if end < start:
                    continue
                x0, x1 = x(begin), x(end)
                title = (
                    f"{name} g{row['number']} {phase} {begin:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
                    f" · {row.get('image') or ''}"
                )
                parts.append(
                    f'<rect class="seg {PHASE_CLASS[phase]}" x="{x0:.1f}" y="{y + 3}" '
                    f'width="{max(x1 - x0, 4.0):.1f}" height="{ROW_H - 8}" rx="3">'
                    f"<title>{escape(title)}</title></rect>"
                )
            first = _phases(row, now)
            if first and x(first[-1][2]) - x(first[0][1]) > 24:
                parts.append(
                    f'<text class="gen" x="{x(first[0][1]) + 4:.1f}" y="{y + 15}">'
                    f"g{row['number']}</text>"
                )
    parts.append("</svg>")
    return "".join(parts)


def _time_ticks(start: datetime, end: datetime) -> list[datetime]:
    days = max((end - start).days, 1)
    step = max(1, days // 8)
    first = start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    ticks = []
    moment = first
    while moment < end:
        ticks.append(moment)
        moment += timedelta(days=step)
    return ticks


def cost_chart(rows: Sequence[dict[str, Any]], *, start: datetime, now: datetime) -> str:
    """Stacked bars: one per day, one colour per service; a legend under the plot."""
    services = sorted({f"{r['env']}/{r['service']}" for r in rows})
    colour = {name: PALETTE[n % len(PALETTE)] for n, name in enumerate(services)}
    days: list[str] = []
    moment = start.date()
    # A billing minimum that began just before midnight is owed on the next day too.
    last = max([now.date(), *(date.fromisoformat(r["day"]) for r in rows)])
    while moment <= last:
        days.append(moment.isoformat())
        moment += timedelta(days=1)
    per_day: dict[str, dict[str, float]] = {d: {} for d in days}
    for row in rows:
        per_day.setdefault(row["day"], {})[f"{row['env']}/{row['service']}"] = row["cost"] or 0.0
    top = max((sum(v.values()) for v in per_day.values()), default=0.0) or 1.0
    scale_top = _nice(top)
    left, plot_h, plot_top = 60, 220, 12
    plot_w = WIDTH - left - 10
    legend_rows = (len(services) + 3) // 4
    height = plot_top + plot_h + 30 + 20 * max(legend_rows, 1)
    bar_w = plot_w / max(len(days), 1)
    parts = [
        f'<svg id="cost-chart" class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" '
        f'role="img" aria-label="Cost per day, stacked by service" '
        ">"
    ]
    decimals = axis_decimals(scale_top / 4)
    for k in range(5):
        value = scale_top * k / 4
        y = plot_top + plot_h - plot_h * k / 4
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"${value:,.{decimals}f}</text>"
        )
    label_every = max(1, len(days) // 10)
    for n, day in enumerate(days):
        x = left + n * bar_w
        y = plot_top + plot_h
        for name in services:
            value = per_day.get(day, {}).get(name, 0.0)
            if value <= 0:
                continue
            h = plot_h * value / scale_top
            y -= h
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour[name]}">'
                f"<title>{escape(f'{day} {name}: ${value:,.4f}')}</title></rect>"
            )
        if n % label_every == 0:
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{plot_top + plot_h + 16}" '
                f'text-anchor="middle">{day[5:]}</text>'
            )
    for n, name in enumerate(services):
        lx = left + (n % 4) * (plot_w / 4)
        ly = plot_top + plot_h + 36 + 20 * (n // 4)
        parts.append(
            f'<rect class="legend-key" x="{lx:.1f}" y="{ly - 10}" width="12" height="12" '
            f'fill="{colour[name]}"/><text class="legend" x="{lx + 18:.1f}" y="{ly}">'
            f"{escape(name)}</text>"
        )
    if not services:
        parts.append(f'<text class="empty" x="{left + 10}" y="{plot_top + 40}">'
                     "No cost recorded in this window.</text>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def axis_decimals(step: float) -> int:
    """Decimals for gridlines `step` apart: two significant digits of the step, and at
    least cents (a demo fleet's $0.0005 steps must not all read "$0.00")."""
    if step <= 0 or not math.isfinite(step):
        return 2
    return max(2, 1 - math.floor(math.log10(step)))


def _nice(value: float) -> float:
    """The next 1, 2, 2.5 or 5 x 10^n at or above `value`: readable axis ends."""
    magnitude = 10.0 ** (len(str(int(value))) - 1) if value >= 1 else 0.01
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude
