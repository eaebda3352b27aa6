"""How people read money and time, the same in the terminal and in the HTML report.

Owns: `money` and `human_time`. Must not: import anything of reconciler's (every
presenter uses it, so it sits below them all).
"""

from __future__ import annotations

from datetime import UTC, datetime


def money(value: float | None, *, signed: bool = False) -> str:
    """`$15.18`, or `+$15.18` / `-$0.50` when the sign matters; sub-cent amounts keep 4
    digits; `-` when unknown."""
    if value is None:
        return "-"
    sign = ("+" if value > 0 else "-" if value < 0 else "") if signed else ""
    digits = 2 if abs(value) >= 0.01 or value == 0 else 4
    amount = abs(value) if signed else value
    return f"{sign}${amount:,.{digits}f}"


def human_time(value: object) -> str:
    """A time as `2026-12-03 21:04Z` (UTC, to the minute): unambiguous and short. Text
    that is not an ISO 8601 time with a zone is returned as it is; nothing is `-`."""
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if moment.tzinfo is None:
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")
