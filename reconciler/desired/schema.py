"""The vocabulary of desired-state validation: checks of single values of the YAML tree.

Owns: turning one `YNode` into a checked Python value (string, integer, number,
duration, choice, flag) or an `InvalidValue` worded for operators, and the `Reporter`
that files problems under a file and line. The pydantic models (desired.models)
use these checks for every leaf, so the wording lives in one place.
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
from typing import Final

from reconciler.desired.yamlsource import REJECTED, YMap, YNode, YScalar, YSeq
from reconciler.durations import DURATION_HINT, format_duration, parse_duration
from reconciler.errors import InvalidValue, Problem

SILENT: Final = ""


@dataclass
class Reporter:
    """Collects the problems of one file; every problem carries the file and a line."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def add(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, key, message))


def join(path: str, key: str) -> str:
    if not key:
        return path
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


def unknown_key_message(key: str, allowed: Iterable[str]) -> str:
    """ "unknown key 'sise' (did you mean 'size'?); allowed keys: ..." """
    allowed = tuple(allowed)
    hint = difflib.get_close_matches(key, allowed, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown key {key!r}{suggestion}; allowed keys: {', '.join(allowed)}"


def check_keys(reporter: Reporter, node: YMap, *, path: str, allowed: Iterable[str]) -> None:
    """Report every key of `node` that is not in `allowed` (for key sets that depend on
    a value, such as a driver's own settings; fixed key sets are the models')."""
    allowed = tuple(allowed)
    for key, value in node.entries.items():
        if key not in allowed:
            reporter.add(value.line, join(path, key), unknown_key_message(key, allowed))


def _not_rejected(node: YNode) -> None:
    if is_rejected(node):
        raise InvalidValue(SILENT)


def check_bool(node: YNode) -> bool:
    """true/false; "yes", 1 or a quoted "true" are errors, never coerced."""
    _not_rejected(node)
    if not isinstance(node, YScalar) or not isinstance(node.value, bool):
        raise InvalidValue(f"must be true or false, got {describe(node)}")
    return node.value


def check_str(
    node: YNode,
    *,
    pattern: re.Pattern[str] | None = None,
    pattern_hint: str = "",
    echo: bool = True,
) -> str:
    """A non-empty string; a number or bool is an error, never coerced."""
    _not_rejected(node)
    if not isinstance(node, YScalar) or not isinstance(node.value, str):
        message = f"must be a string, got {describe(node, echo=echo)}"
        if echo and isinstance(node, YScalar) and node.value is not None:
            # YAML reads unquoted 1.10 as the number 1.1: say how to keep the text.
            message += f'; quote it if you mean the text: "{node.text}"'
        raise InvalidValue(message)
    text = node.value
    if not text.strip():
        raise InvalidValue("must not be empty")
    if pattern is not None and not pattern.fullmatch(text):
        shown = f" {text!r}" if echo else ""
        raise InvalidValue(f"invalid value{shown}: {pattern_hint}")
    return text


def _number_shape(*, integer: bool, minimum: float, maximum: float | None) -> str:
    noun = "integer" if integer else "number"
    if maximum is not None:
        return f"must be {'an' if integer else 'a'} {noun} between {minimum:g} and {maximum:g}"
    if minimum == 0:
        return f"must be a non-negative {noun}"
    return f"must be {'an' if integer else 'a'} {noun} >= {minimum:g}"


def check_int(node: YNode, *, minimum: int, maximum: int) -> int:
    """An int within bounds; booleans and quoted digits are errors."""
    _not_rejected(node)
    shape = _number_shape(integer=True, minimum=minimum, maximum=maximum)
    value = node.value if isinstance(node, YScalar) else None
    if not isinstance(node, YScalar) or isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{shape}, got {describe(node)}")
    if value < minimum or value > maximum:
        raise InvalidValue(f"{shape}, got {value}")
    return value


def check_number(node: YNode, *, minimum: float, maximum: float) -> float:
    """A finite float within bounds; booleans and strings are errors."""
    _not_rejected(node)
    shape = _number_shape(integer=False, minimum=minimum, maximum=maximum)
    value = node.value if isinstance(node, YScalar) else None
    if (
        not isinstance(node, YScalar)
        or isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        raise InvalidValue(f"{shape}, got {describe(node)}")
    if value < minimum or value > maximum:
        raise InvalidValue(f"{shape}, got {node.text}")
    return float(value)


def check_duration(node: YNode, *, maximum: float, positive: bool = False) -> float:
    """A duration string's seconds, at most `maximum` (every duration has a range the
    runtime can hold: a `3000000d` would overflow the clock arithmetic of every plan);
    a bare number is an error (which unit?)."""
    _not_rejected(node)
    if not isinstance(node, YScalar) or not isinstance(node.value, str):
        message = f"must be a duration string, got {describe(node)}"
        if isinstance(node, YScalar) and isinstance(node.value, int | float):
            message += f'; add a unit, e.g. "{node.text}s"'
        raise InvalidValue(f"{message} ({DURATION_HINT})")
    try:
        seconds = parse_duration(node.value)
    except ValueError:
        raise InvalidValue(f"invalid duration {node.value!r}: {DURATION_HINT}") from None
    if positive and seconds <= 0:
        raise InvalidValue(f"must be longer than zero, got {node.value!r}")
    if seconds > maximum:
        raise InvalidValue(f"must be at most {format_duration(maximum)}, got {node.value!r}")
    return seconds


def check_choice(node: YNode, *, choices: Iterable[str]) -> str:
    """One of `choices`, suggesting the closest on a typo."""
    choices = tuple(choices)
    text = check_str(node)
    if text not in choices:
        hint = difflib.get_close_matches(text, choices, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InvalidValue(f"must be one of {', '.join(choices)}; got {text!r}{suggestion}")
    return text


def get_str(reporter: Reporter, node: YNode, *, path: str, echo: bool = True) -> str | None:
    """`check_str` for code outside the models (a driver's own settings): the problem
    goes to `reporter` and the result is None."""
    try:
        return check_str(node, echo=echo)
    except InvalidValue as exc:
        if exc.message:
            reporter.add(node.line, join(path, exc.at), exc.message)
        return None


def get_bool(reporter: Reporter, node: YNode, *, path: str) -> bool | None:
    """`check_bool` for code outside the models."""
    try:
        return check_bool(node)
    except InvalidValue as exc:
        if exc.message:
            reporter.add(node.line, join(path, exc.at), exc.message)
        return None
