"""Changing one service's `image:` in an environment file, and nothing else.

Owns: finding the value in the file as written (our safe YAML reader gives each value's
character span and quoting style), writing the new image in the same style, and proving
that the result differs from the original only there. Must not: reformat anything: a
comment-preserving round trip (ruamel.yaml) still re-emits indentation and quoting, so
the edit is a splice of the value's own characters, and every other byte stays.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from reconciler.desired.yamlsource import YMap, YScalar, compose_yaml
from reconciler.errors import Problem, PromotionRefused

# An image id or name written plain stays plain when it looks like one and YAML reads
# it back as the same text; anything else is written double-quoted.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


def current_image(text: str, *, service: str, display: str) -> str:
    """The image the file gives `service` (as written)."""
    node = _image_node(text, service=service, display=display)
    assert isinstance(node.value, str)
    return node.value


def replace_image(text: str, *, service: str, image: str, display: str) -> str:
    """`text` with `services.<service>.image` set to `image`, every other byte kept."""
    node = _image_node(text, service=service, display=display)
    assert node.span is not None
    start, end = node.span
    written = text[start:end]
    if node.style in ("|", ">") or "\n" in written:
        raise PromotionRefused(
            [f"{display} line {node.line}: services.{service}.image is written over several "
             "lines; write it on one line and retry"]
        )
    edited = text[:start] + _render(image, style=node.style) + text[end:]
    _prove_one_change(text, edited, service=service, image=image, display=display)
    return edited


def _image_node(text: str, *, service: str, display: str) -> YScalar:
    problems: list[Problem] = []
    document = compose_yaml(text, display=display, problems=problems)
    if problems or document is None or not isinstance(document.root, YMap):
        detail = "; ".join(str(p) for p in problems) or "not a mapping"
        raise PromotionRefused([f"{display} cannot be read: {detail}"])
    services = document.root.entries.get("services")
    entry = services.entries.get(service) if isinstance(services, YMap) else None
    if not isinstance(entry, YMap):
        raise PromotionRefused([f"{display} has no service {service!r}"])
    node = entry.entries.get("image")
    if not isinstance(node, YScalar) or not isinstance(node.value, str) or node.span is None:
        raise PromotionRefused([f"{display}: services.{service}.image is not a plain string"])
    return node


def _render(image: str, *, style: str | None) -> str:
    if style == "'":
        return "'" + image.replace("'", "''") + "'"
    if style is None and _PLAIN.fullmatch(image) and yaml.safe_load(image) == image:
        return image
    # JSON's string syntax is YAML's double-quoted style.
    return json.dumps(image, ensure_ascii=False)


def _prove_one_change(
    before: str, after: str, *, service: str, image: str, display: str
) -> None:
    """Read both versions back: they must be equal apart from that one image."""
    old: Any = yaml.safe_load(before)
    new: Any = yaml.safe_load(after)
    try:
        old["services"][service]["image"] = image
    except (TypeError, KeyError):  # pragma: no cover - _image_node found it
        raise PromotionRefused([f"{display}: cannot set services.{service}.image"]) from None
    if old != new:
        raise PromotionRefused(
            [f"{display}: changing services.{service}.image would change more than the image "
             "(a YAML anchor or merge key?); edit it by hand"]
        )
