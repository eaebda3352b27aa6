"""Running a desired-state model over a YAML tree and reporting what pydantic found.

Owns: turning each pydantic error into our `Problem` (file, the line of the value
or of the mapping that lacks a key, the dotted key, and the message: ours for values,
"required key" and "unknown key ... (did you mean ...)" for keys), and validating a
part quietly when a caller needs what is valid of a file that has problems.
Must not: show pydantic's own rendering of an error (it quotes the input, which may
be a secret) or let a pydantic type escape to callers.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from reconciler.desired.models import INVALID, LoadContext
from reconciler.desired.schema import Reporter, join, unknown_key_message
from reconciler.desired.yamlsource import YMap, YNode, YSeq

_M = TypeVar("_M", bound=BaseModel)

Location = tuple[int | str, ...]


def validate(
    model: type[_M], node: YNode, *, reporter: Reporter, context: LoadContext, path: str = ""
) -> _M | None:
    """`model` built from `node`, or None with every problem added to `reporter`."""
    try:
        return model.model_validate(node, context=context)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            _report(reporter, model, node, error["type"], error["loc"], error.get("ctx"),
                    error["msg"], path=path)  # fmt: skip
        return None


def failed_keys(
    model: type[_M], node: YNode, *, context: LoadContext
) -> tuple[_M | None, set[str]]:
    """(`model` built from `node`, or None; the top-level keys that had problems)."""
    try:
        return model.model_validate(node, context=context), set()
    except ValidationError as exc:
        return None, {str(error["loc"][0]) for error in exc.errors() if error["loc"]}


def without(node: YMap, keys: Iterable[str]) -> YMap:
    """`node` minus `keys`: what is left of a mapping once its wrong keys are set aside."""
    dropped = set(keys)
    return YMap({k: v for k, v in node.entries.items() if k not in dropped}, node.line)


def _report(
    reporter: Reporter,
    model: type[BaseModel],
    root: YNode,
    kind: str,
    loc: Location,
    ctx: dict[str, Any] | None,
    fallback: str,
    *,
    path: str,
) -> None:
    keys = tuple(part for part in loc if part != "[key]")
    if kind == INVALID:
        message = str((ctx or {}).get("message", ""))
        if not message:
            return  # the YAML layer already reported this value
        at = str((ctx or {}).get("at", ""))
        full = (*keys, at) if at else keys
        reporter.add(_locate(root, full).line, join(path, _dotted(full)), message)
    elif kind == "missing":
        reporter.add(
            _locate(root, keys[:-1]).line,
            join(path, _dotted(keys)),
            f"required key {keys[-1]!r} is missing",
        )
    elif kind == "extra_forbidden":
        owner = _model_at(model, keys[:-1])
        allowed = _keys_of(owner) if owner is not None else ()
        reporter.add(
            _locate(root, keys).line,
            join(path, _dotted(keys)),
            unknown_key_message(str(keys[-1]), allowed),
        )
    else:  # a pydantic check of its own; its message never quotes the input
        reporter.add(_locate(root, keys).line, join(path, _dotted(keys)), fallback.lower())


def _locate(root: YNode, keys: Sequence[int | str]) -> YNode:
    """The deepest node of `root` along `keys` (the value for a key, else its mapping)."""
    node = root
    for key in keys:
        if isinstance(node, YMap) and isinstance(key, str) and key in node.entries:
            node = node.entries[key]
        elif isinstance(node, YSeq) and isinstance(key, int) and 0 <= key < len(node.items):
            node = node.items[key]
        else:
            break
    return node


def _dotted(keys: Sequence[int | str]) -> str:
    """('notifiers', 0, 'events', 2) -> 'notifiers[0].events[2]'."""
    text = ""
    for key in keys:
        if isinstance(key, int):
            text += f"[{key}]"
        elif key:
            text = f"{text}.{key}" if text else key
    return text


def _keys_of(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(info.alias or name for name, info in model.model_fields.items())


def _model_at(model: type[BaseModel], keys: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that validated the mapping at `keys` (for its allowed keys)."""
    current: Any = model
    for key in keys:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            found = [
                info.annotation
                for name, info in current.model_fields.items()
                if (info.alias or name) == key
            ]
            if not found:
                return None
            current = found[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) in (list, tuple):
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
