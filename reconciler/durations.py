"""Duration strings of the desired state: `90s`, `30m`, `2h`, `1d`, `1h30m`.

Owns: parsing a duration string into seconds. Must not: accept bare numbers (a
unit-less `30` is ambiguous to an operator) or know where a duration came from.
"""

from __future__ import annotations

import re
from typing import Final

_UNIT_SECONDS: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Units in descending order, each at most once: "1h30m" reads unambiguously,
# "30m1h" or "1m1m" is more likely a typo than an intent.
# At most 9 digits a unit: longer is a typo, and a 400-digit amount would not even fit
# a float. Each field's own range is checked where the field is read.
_DURATION = re.compile(r"(?:(\d{1,9})d)?(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?")

DURATION_HINT: Final = "a duration is a number with a unit s, m, h or d, e.g. 90s, 30m, 2h, 1h30m"


def parse_duration(text: str) -> float:
    """Return the number of seconds `text` denotes; raise ValueError if it is not a duration."""
    if not isinstance(text, str):
        raise ValueError(f"not a duration: {text!r} ({DURATION_HINT})")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r} ({DURATION_HINT})")
    return float(
        sum(
            int(amount) * seconds
            for amount, seconds in zip(match.groups(), _UNIT_SECONDS.values(), strict=True)
            if amount is not None
        )
    )


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of whole seconds in the units above: 2592000 -> 30d."""
    remaining, parts = int(seconds), []
    for unit, size in _UNIT_SECONDS.items():
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"
