"""Safe reading of one desired-state YAML file into a line-tracked tree.

Owns: the byte-level checks (size cap, UTF-8, git merge-conflict markers), composing
the YAML node graph with a locked-down `yaml.SafeLoader`, and turning it into plain
`YScalar` / `YMap` / `YSeq` values that remember the line each key sits on.
Must not: construct Python objects from tags, expand anchors or aliases, coerce
values to the types a schema wants (that is `schema`'s job), or know any key name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.desired.files import read_regular_file
from reconciler.errors import Problem, Refused

MAX_YAML_BYTES: Final = 1024 * 1024
# Deep nesting is never needed by the schema; the cap keeps the (recursive)
# composer and our walker far from Python's recursion limit.
MAX_DEPTH: Final = 40
# A YAML bomb holds thousands of aliases: one problem per kind of refused construct
# (anchor, alias, tag) per file names the first one and lists the lines of a few more.
MAX_REFUSED_LINES_LISTED: Final = 10

_CORE = "tag:yaml.org,2002:"
# Explicit tags that merely restate what a plain value already is; anything else
# (python/*, binary, set, omap, custom !tags) would construct objects or surprise.
_ALLOWED_EXPLICIT_TAGS: Final = frozenset(
    _CORE + name for name in ("str", "int", "float", "bool", "null", "map", "seq")
) | {"!"}
_REJECTED_TAG: Final = "tag:reconciler,2024:rejected"
_MERGE_MARKER = re.compile(r"^(<{7}|={7}|>{7})(?: |$)")


class Rejected:
    """Stands in for a value already reported (bad tag, alias); validators skip it."""

    _instance: Rejected | None = None

    def __new__(cls) -> Rejected:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REJECTED"


REJECTED: Final = Rejected()

# str, int, float, bool, None, a date, or REJECTED: validators narrow with isinstance.
ScalarValue = object


@dataclass(frozen=True)
class YScalar:
    value: ScalarValue
    text: str  # the source text, for messages ("1.10", not 1.1)
    line: int  # line of the key that holds this value, else of the value
    # Where the value is written (start and end character offsets, quotes included) and
    # how (None plain, "'" or '"' quoted, "|" or ">" block): what an edit of this one
    # value needs to leave every other character of the file as it was.
    span: tuple[int, int] | None = field(default=None, compare=False)
    style: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class YMap:
    entries: Mapping[str, YNode]
    line: int


@dataclass(frozen=True)
class YSeq:
    items: tuple[YNode, ...]
    line: int


YNode = YScalar | YMap | YSeq


@dataclass(frozen=True)
class YamlDocument:
    file: str  # the path as shown to operators
    root: YNode | None  # None: the document is empty (or only comments)


def read_yaml_file(
    path: Path, *, root: Path, display: str, problems: list[Problem]
) -> YamlDocument | None:
    """Read and compose one YAML file (a regular file inside `root`); record problems,
    return None if unusable."""

    def refuse(line: int | None, message: str) -> None:
        problems.append(Problem(display, line, "", message))

    try:
        raw = read_regular_file(
            root, path, limit=MAX_YAML_BYTES,
            limit_text="desired-state YAML files are limited to 1 MiB",
        )  # fmt: skip
    except Refused as exc:
        message = str(exc)
        refuse(None, f"file {message}" if message.startswith("is ") else message)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        refuse(line, f"file is not valid UTF-8 (bad byte at offset {exc.start})")
        return None
    for number, content in enumerate(text.splitlines(), start=1):
        if _MERGE_MARKER.match(content):
            refuse(
                number,
                f"git merge-conflict marker {content[:7]!r} found: the file has an "
                "unresolved merge conflict; resolve it and commit again",
            )
            return None
    return compose_yaml(text, display=display, problems=problems)


def compose_yaml(text: str, *, display: str, problems: list[Problem]) -> YamlDocument | None:
    """Compose `text` safely; record problems and return None if it cannot be used."""
    loader: _StrictLoader | None = None
    try:
        # What yaml.compose(text, Loader=_StrictLoader) does; the reader checks
        # for unprintable characters as soon as it is built.
        loader = _StrictLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark is not None and mark is not None and not text[mark.index :].strip():
            # "got <stream end>": the end of the file says nothing; the unclosed
            # construct's start does.
            mark = exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = " ".join(part for part in (exc.context, exc.problem) if part)
        problems.append(Problem(display, line, "", f"YAML syntax error: {detail}"))
        return None
    except yaml.reader.ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        line = text[:position].count("\n") + 1
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        problems.append(
            Problem(display, line, "", f"YAML cannot contain the control character {shown}")
        )
        return None
    except RecursionError:
        problems.append(Problem(display, None, "", "YAML is nested too deeply"))
        return None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return YamlDocument(display, None)
    walker = _Walker(display, problems)
    # Refused and duplicate constructs are reported by the walker with their key
    # path; the rest of the file is still validated so one pass shows every problem.
    root = walker.convert(node, line=_line(node.start_mark), depth=0, path="")
    walker.summarize_refusals()
    return YamlDocument(display, root)


# YAML 1.1 reads `010` as 8, `1:30` as 90, `0x1F`, `0b11`, `1_000` as numbers too: an
# operator who wrote them meant something else, so only plain decimal is a number.
_DECIMAL_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_DECIMAL_FLOAT = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
# Decoded text may hold what the reader's check of the raw file cannot see: escapes
# like "\e[2J" or "\0". C0/C1 controls and DEL, and the bidirectional overrides that
# make text display other than it reads; a tab and a newline are ordinary text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def first_control_character(text: str) -> str | None:
    """`U+001B` for the first control character in `text`, or None."""
    found = _CONTROL.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def _odd_number(node: ScalarNode) -> str | None:
    """Why a number-tagged scalar is refused, or None for a plain decimal one."""
    text = str(node.value).strip()
    if node.tag == _CORE + "int" and _DECIMAL_INT.fullmatch(text):
        return None
    if node.tag == _CORE + "float":
        if text.lower().lstrip("+-") in (".inf", ".nan"):
            return "infinite and not-a-number values are not numbers the reconciler can use"
        if _DECIMAL_FLOAT.fullmatch(text) and not re.match(r"[-+]?0[0-9]", text):
            return None
    return (
        "this number is not written in plain decimal (YAML 1.1 reads a leading 0 as octal, "
        "1:30 as 90, 0x.. as hex and ignores '_'); write it in decimal, or quote it if it "
        "is text"
    )


def _line(mark: Mark | None) -> int:
    return mark.line + 1 if mark is not None else 1


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and explicit non-core tags.

    A refused node is replaced by a placeholder carrying the reason, so an alias is
    never expanded and the walker can report the reason with its key path.
    """

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            # The stubs leave Parser's event accessors untyped.
            alias: Any = self.get_event()  # type: ignore[no-untyped-call]
            return _placeholder(
                alias,
                "alias",
                f"YAML alias *{alias.anchor} is not allowed: anchors and aliases are "
                "refused (YAML-bomb protection); write the value out",
            )
        event = self.peek_event()  # type: ignore[no-untyped-call]
        tag = getattr(event, "tag", None)
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            return _placeholder(
                event,
                "anchor",
                f"YAML anchor &{event.anchor} is not allowed: anchors and aliases are "
                "refused (YAML-bomb protection); write the value out",
            )
        if tag is not None and tag not in _ALLOWED_EXPLICIT_TAGS:
            return _placeholder(
                event,
                "tag",
                f"explicit YAML tag {_short_tag(tag)!r} is not allowed: desired state "
                "holds plain values only",
            )
        return node


def _placeholder(event: Any, kind: str, reason: str) -> ScalarNode:
    return ScalarNode(f"{_REJECTED_TAG}:{kind}", reason, event.start_mark, event.end_mark)


def _is_placeholder(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag.startswith(_REJECTED_TAG + ":")


class _Walker:
    """Turns composed nodes into YNodes; reports refusals, duplicate and odd keys."""

    def __init__(self, display: str, problems: list[Problem]) -> None:
        self.display = display
        self.problems = problems
        self.constructor = SafeConstructor()
        # Per kind of refused construct: the index of its first problem, later lines.
        self.first_refusal: dict[str, int] = {}
        self.more_refusal_lines: dict[str, list[int]] = {}

    def fail(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(self.display, line, path, message))

    def refuse(self, node: ScalarNode, path: str) -> None:
        kind = node.tag.rsplit(":", 1)[-1]
        if kind not in self.first_refusal:
            self.first_refusal[kind] = len(self.problems)
            self.fail(_line(node.start_mark), path, str(node.value))
        else:
            self.more_refusal_lines.setdefault(kind, []).append(_line(node.start_mark))

    def summarize_refusals(self) -> None:
        """Fold the later refusals of each kind into the first one's message."""
        for kind, more in self.more_refusal_lines.items():
            index = self.first_refusal[kind]
            first = self.problems[index]
            lines = sorted(set(more))
            shown = ", ".join(str(n) for n in lines[:MAX_REFUSED_LINES_LISTED])
            if len(lines) > MAX_REFUSED_LINES_LISTED:
                shown += ", ..."
            many = len(more) > 1
            self.problems[index] = Problem(
                first.file,
                first.line,
                first.key,
                f"{first.message} ({len(more)} more refused YAML construct{'s' if many else ''}"
                f" like it in this file, on line{'s' if len(lines) > 1 else ''} {shown})",
            )

    def convert(self, node: Node, *, line: int, depth: int, path: str) -> YNode:
        if depth > MAX_DEPTH:
            shown = path if len(path) <= 60 else path[:57] + "..."
            self.fail(line, shown, f"YAML is nested deeper than {MAX_DEPTH} levels")
            return YScalar(REJECTED, "", line)
        if isinstance(node, MappingNode):
            return self.convert_mapping(node, line=line, depth=depth, path=path)
        if isinstance(node, SequenceNode):
            items = tuple(
                self.convert(
                    item, line=_line(item.start_mark), depth=depth + 1, path=f"{path}[{index}]"
                )
                for index, item in enumerate(node.value)
            )
            if any(isinstance(item, YScalar) and item.value is REJECTED for item in items):
                # The item's problem is reported; a list missing it is no value to
                # validate further (that would only add "must be ..., got a list").
                return YScalar(REJECTED, "", line)
            return YSeq(items, line)
        assert isinstance(node, ScalarNode)
        if _is_placeholder(node):
            self.refuse(node, path)
            return YScalar(REJECTED, "", line)
        try:
            value = self.scalar_value(node)
        except (ValueError, KeyError, OverflowError):
            # An explicit tag on text that does not fit it (`!!int abc`), or a
            # date-shaped value that is no date (2024-13-45).
            # Not echoed: the walker cannot tell whether this sits under credentials.
            if node.tag == _CORE + "timestamp":
                message = "YAML reads this value as a date but it is not a valid one; quote it"
            else:
                message = f"value does not fit its explicit tag {_short_tag(node.tag)!r}"
            self.fail(line, path, message)
            return YScalar(REJECTED, node.value, line)
        odd = _odd_number(node) if node.tag in (_CORE + "int", _CORE + "float") else None
        if odd is not None:
            # Not echoed: the walker cannot tell whether this sits under credentials.
            self.fail(line, path, odd)
            return YScalar(REJECTED, node.value, line)
        if isinstance(value, str):
            hidden = first_control_character(value)
            if hidden is not None:
                self.fail(line, path, f"contains the control character {hidden} (written as an "
                          "escape); remove it")  # fmt: skip
                return YScalar(REJECTED, "", line)
        span = (node.start_mark.index, node.end_mark.index)
        return YScalar(value, node.value, line, span=span, style=node.style)

    def convert_mapping(self, node: MappingNode, *, line: int, depth: int, path: str) -> YMap:
        entries: dict[str, YNode] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = _line(key_node.start_mark)
            if not isinstance(key_node, ScalarNode):
                self.fail(key_line, path, "mapping keys must be plain strings")
                continue
            if _is_placeholder(key_node):
                self.refuse(key_node, path)
                continue
            # Keys keep the text as written: `on:` or `123:` name things, they are
            # not booleans or numbers.
            key = str(key_node.value)
            hidden = first_control_character(key)
            if hidden is not None:
                self.fail(key_line, path, f"a key contains the control character {hidden}")
                continue
            key_path = f"{path}.{key}" if path else key
            if key in entries:
                self.fail(
                    key_line,
                    key_path,
                    f"duplicate key {key!r} (first on line {key_lines[key]}, "
                    f"again on line {key_line})",
                )
                continue
            key_lines[key] = key_line
            entries[key] = self.convert(value_node, line=key_line, depth=depth + 1, path=key_path)
        return YMap(entries, line)

    def scalar_value(self, node: ScalarNode) -> ScalarValue:
        tag = node.tag
        # Only the value-typing constructors of the core schema are used; none of
        # them builds anything but str/int/float/bool/None/date.
        if tag == _CORE + "null":
            return None
        if tag == _CORE + "bool":
            return self.constructor.construct_yaml_bool(node)
        if tag == _CORE + "int":
            return self.constructor.construct_yaml_int(node)
        if tag == _CORE + "float":
            return self.constructor.construct_yaml_float(node)
        if tag == _CORE + "timestamp":
            return self.constructor.construct_yaml_timestamp(node)
        if tag in (_CORE + "map", _CORE + "seq"):
            raise ValueError("collection tag on a scalar")
        # str, and the implicit merge (`<<`) / value (`=`) tags, stay as written.
        return str(node.value)
