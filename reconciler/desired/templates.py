"""Templates of health targets: `http://{private_ip}:8080/healthz`.

Owns: the placeholders a template may use and the one function that both checks a
template and fills it, so validation and the rollout cannot disagree about what is
valid: only plain `{name}` fields from PLACEHOLDERS, with `{{` and `}}` for literal
braces. No attribute or index access (`{id.__class__}`, `{id[0]}`), conversions or
format specs: a template is text with holes, not code.
Must not: know where a template comes from or what the filled text is used for.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from string import Formatter
from typing import Final

PLACEHOLDERS: Final = (
    "id", "name", "private_ip", "public_ip", "image", "generation", "env", "service",
)  # fmt: skip


def template_problem(template: str) -> str | None:
    """Why `template` cannot be filled, or None if it is a valid template."""
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:  # an unmatched `{` or `}`
        return f"malformed template ({exc}); write {{{{ and }}}} for literal braces"
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            shown = field if len(field) <= 40 else field[:37] + "..."
            return f"unknown placeholder {{{shown}}}; the placeholders are {known}"
        if spec or conversion:
            return f"placeholder {{{field}}} takes no conversion or format (write {{{field}}})"
    return None


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """`template` with its placeholders filled; ValueError if it is not valid."""
    problem = template_problem(template)
    if problem is not None:
        raise ValueError(problem)
    return template.format_map({name: values.get(name, "") for name in PLACEHOLDERS})


def command_problem(command: str) -> str | None:
    """Why `command` cannot be run as a program with arguments (shell-style quoting, no
    shell), or None."""
    try:
        words = shlex.split(command)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        return f"cannot be split into a program and its arguments: {exc}"
    if not words:
        return "must name a program to run"
    return None
