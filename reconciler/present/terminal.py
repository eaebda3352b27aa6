"""Text for a terminal: what came from a commit, the ledger or a cloud, shown as text.

Owns: `shown`, the one way such text reaches rich: control characters (ESC, CR, BEL,
NUL, C1, DEL), line breaks and bidirectional overrides become visible escapes (`\\x1b`),
so a commit subject cannot clear the screen, rewrite a line or reorder what it shows;
and rich markup is escaped, so `[/x]` prints as itself instead of raising and
`[link=...]` stays text. Must not: change JSON output (json escapes on its own).
"""

from __future__ import annotations

import re

from rich.markup import escape

_HIDDEN = re.compile(
    "[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069\\u2028\\u2029]"
)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object) -> str:
    """`text` safe to print through rich: controls made visible, markup escaped."""
    return escape(_HIDDEN.sub(_visible, str(text)))
