"""The vocabulary of desired-state validation: typed getters over the YAML tree.

Owns: turning `YNode`s into checked Python values (strings, integers, numbers,
durations, choices, mappings) and wording the problems for operators.
Must not: coerce (a number is never a string, a bool is never an integer), echo a
value when the caller says it may be secret, or know any particular file's keys.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from reconciler.desired.durations import DURATION_HINT, format_duration, parse_duration
from reconciler.desired.yamlsource import REJECTED, YMap, YNode, YScalar, YSeq
from reconciler.errors import Problem


@dataclass
class Reporter:
    """Collects the problems of one file; every problem carries the file and a line."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def add(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, key, message))


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def is_rejected(node: YNode) -> bool:
    """True for a value the YAML layer already refused (and reported)."""
    return isinstance(node, YScalar) and node.value is REJECTED


def describe(node: YNode, *, echo: bool = True) -> str:
    """Name what the operator wrote, e.g. "a number (1.10)"; `echo=False` omits the text."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    value = node.value
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a number"
    elif isinstance(value, date):
        kind = "a date"
    else:
        kind = "a string"
    if not echo:
        return kind
    shown = repr(node.text) if kind == "a string" else node.text
    return f"{kind} ({shown})"


def check_keys(reporter: Reporter, node: YMap, *, path: str, allowed: Iterable[str]) -> None:
    """Report every key of `node` that is not in `allowed`."""
    allowed = tuple(allowed)
    for key, value in node.entries.items():
        if key in allowed:
            continue
        hint = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        reporter.add(
            value.line,
            join(path, key),
            f"unknown key {key!r}{suggestion}; allowed keys: {', '.join(allowed)}",
        )


def require(reporter: Reporter, node: YMap, key: str, *, path: str) -> YNode | None:
    """Return `node[key]`, or report it missing (at the line of the mapping)."""
    if key in node.entries:
        return node.entries[key]
    reporter.add(node.line, join(path, key), f"required key {key!r} is missing")
    return None


def get_map(
    reporter: Reporter,
    node: YNode,
    *,
    path: str,
    what: str = "a mapping",
    allow_null: bool = False,
    echo: bool = True,
) -> YMap | None:
    """Return `node` as a mapping; null becomes an empty mapping when `allow_null`."""
    if isinstance(node, YMap):
        return node
    if is_rejected(node):
        return None
    if allow_null and isinstance(node, YScalar) and node.value is None:
        return YMap({}, node.line)
    reporter.add(node.line, path, f"must be {what}, got {describe(node, echo=echo)}")
    return None


def get_bool(reporter: Reporter, node: YNode, *, path: str) -> bool | None:
    """Return `node` as true/false; "yes", 1 or a quoted "true" are errors, never coerced."""
    if is_rejected(node):
        return None
    if not isinstance(node, YScalar) or not isinstance(node.value, bool):
        reporter.add(node.line, path, f"must be true or false, got {describe(node)}")
        return None
    return node.value


def get_str(
    reporter: Reporter,
    node: YNode,
    *,
    path: str,
    pattern: re.Pattern[str] | None = None,
    pattern_hint: str = "",
    echo: bool = True,
) -> str | None:
    """Return `node` as a non-empty string; a number or bool is an error, never coerced."""
    if is_rejected(node):
        return None
    if not isinstance(node, YScalar) or not isinstance(node.value, str):
        message = f"must be a string, got {describe(node, echo=echo)}"
        if echo and isinstance(node, YScalar) and node.value is not None:
            # YAML reads unquoted 1.10 as the number 1.1: say how to keep the text.
            message += f'; quote it if you mean the text: "{node.text}"'
        reporter.add(node.line, path, message)
        return None
    text = node.value
    if not text.strip():
        reporter.add(node.line, path, "must not be empty")
        return None
    if pattern is not None and not pattern.fullmatch(text):
        shown = f" {text!r}" if echo else ""
        reporter.add(node.line, path, f"invalid value{shown}: {pattern_hint}")
        return None
    return text


def _number_shape(*, integer: bool, minimum: float, maximum: float | None) -> str:
    noun = "integer" if integer else "number"
    if maximum is not None:
        return f"must be {'an' if integer else 'a'} {noun} between {minimum:g} and {maximum:g}"
    if minimum == 0:
        return f"must be a non-negative {noun}"
    return f"must be {'an' if integer else 'a'} {noun} >= {minimum:g}"


def get_int(
    reporter: Reporter, node: YNode, *, path: str, minimum: int, maximum: int
) -> int | None:
    """Return `node` as an int within bounds; booleans and quoted digits are errors."""
    if is_rejected(node):
        return None
    shape = _number_shape(integer=True, minimum=minimum, maximum=maximum)
    value = node.value if isinstance(node, YScalar) else None
    if not isinstance(node, YScalar) or isinstance(value, bool) or not isinstance(value, int):
        reporter.add(node.line, path, f"{shape}, got {describe(node)}")
        return None
    if value < minimum or (maximum is not None and value > maximum):
        reporter.add(node.line, path, f"{shape}, got {value}")
        return None
    return value


def get_number(
    reporter: Reporter, node: YNode, *, path: str, minimum: float, maximum: float
) -> float | None:
    """Return `node` as a finite float within bounds; booleans and strings are errors."""
    if is_rejected(node):
        return None
    shape = _number_shape(integer=False, minimum=minimum, maximum=maximum)
    value = node.value if isinstance(node, YScalar) else None
    if (
        not isinstance(node, YScalar)
        or isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        reporter.add(node.line, path, f"{shape}, got {describe(node)}")
        return None
    if value < minimum or (maximum is not None and value > maximum):
        reporter.add(node.line, path, f"{shape}, got {node.text}")
        return None
    return float(value)


def get_duration(
    reporter: Reporter, node: YNode, *, path: str, maximum: float, positive: bool = False
) -> float | None:
    """Return a duration string's seconds, at most `maximum` (every duration has a range
    the runtime can hold: a `3000000d` would overflow the clock arithmetic of every
    plan); a bare number is an error (which unit?)."""
    if is_rejected(node):
        return None
    if not isinstance(node, YScalar) or not isinstance(node.value, str):
        message = f"must be a duration string, got {describe(node)}"
        if isinstance(node, YScalar) and isinstance(node.value, int | float):
            message += f'; add a unit, e.g. "{node.text}s"'
        reporter.add(node.line, path, f"{message} ({DURATION_HINT})")
        return None
    try:
        seconds = parse_duration(node.value)
    except ValueError:
        reporter.add(node.line, path, f"invalid duration {node.value!r}: {DURATION_HINT}")
        return None
    if positive and seconds <= 0:
        reporter.add(node.line, path, f"must be longer than zero, got {node.value!r}")
        return None
    if seconds > maximum:
        reporter.add(
            node.line, path, f"must be at most {format_duration(maximum)}, got {node.value!r}"
        )
        return None
    return seconds


def get_choice(reporter: Reporter, node: YNode, *, path: str, choices: Iterable[str]) -> str | None:
    """Return `node` if it is one of `choices`, suggesting the closest on a typo."""
    choices = tuple(choices)
    text = get_str(reporter, node, path=path)
    if text is None:
        return None
    if text not in choices:
        hint = difflib.get_close_matches(text, choices, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        reporter.add(
            node.line, path, f"must be one of {', '.join(choices)}; got {text!r}{suggestion}"
        )
        return None
    return text
