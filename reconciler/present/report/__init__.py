"""The ledger for people: terminal tables and the self-contained HTML report.

Owns: presenting ledger rows (`tables`), gathering what the report shows (`data`) and
drawing it as one HTML file with inline CSS and SVG (`html`, `svg`). Must not: load
anything from the network (no script, font or stylesheet URLs) or write the ledger.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.ledger import Ledger
from reconciler.present.report.data import gather_report
from reconciler.present.report.html import render_report


def build_report(ledger: Ledger, *, now: datetime, days: int = 30) -> str:
    """The whole HTML page for the last `days` days of this ledger."""
    return render_report(gather_report(ledger, now=now, days=days))


__all__ = ["build_report", "gather_report", "render_report"]
