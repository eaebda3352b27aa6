"""The `notifiers:` list of reconciler.yaml: where events are sent.

Owns: validating each notifier (exactly one of `webhook` URL or `command` line, an
optional HMAC `secret` reference, an optional `events` filter). Must not: send
anything (the notifier plugins do) or echo a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from reconciler.desired.schema import (
    Reporter,
    check_keys,
    get_choice,
    get_duration,
    get_map,
    get_str,
    join,
)
from reconciler.desired.templates import command_problem
from reconciler.desired.yamlsource import YNode, YSeq
from reconciler.model import NotifierSpec, SecretRef

NOTIFIER_KINDS: Final = ("webhook", "command")
NOTIFIER_KEYS: Final = (*NOTIFIER_KINDS, "secret", "events", "timeout")
MAX_NOTIFY_TIMEOUT: Final = 120.0  # a delivery never holds a pass longer than this
EVENT_KINDS: Final = (
    "generation-activated",
    "generation-failed",
    "rollback",
    "guard-tripped",
    "invalid-commit",
    "run-failed",
    "service-down",
    "service-up",
)


def parse_notifiers(
    reporter: Reporter, node: YNode, *, parse_secret: Callable[..., SecretRef | None]
) -> tuple[NotifierSpec, ...] | None:
    if not isinstance(node, YSeq):
        reporter.add(node.line, "notifiers", "must be a list of notifiers")
        return None
    found: list[NotifierSpec] = []
    ok = True
    for index, item in enumerate(node.items):
        path = f"notifiers[{index}]"
        spec = _parse_one(reporter, item, path=path, parse_secret=parse_secret)
        if spec is None:
            ok = False
        else:
            found.append(spec)
    return tuple(found) if ok else None


def _parse_one(
    reporter: Reporter, node: YNode, *, path: str, parse_secret: Callable[..., SecretRef | None]
) -> NotifierSpec | None:
    entry = get_map(reporter, node, path=path, what="a mapping with webhook or command")
    if entry is None:
        return None
    check_keys(reporter, entry, path=path, allowed=NOTIFIER_KEYS)
    kinds = [k for k in NOTIFIER_KINDS if k in entry.entries]
    if len(kinds) != 1:
        reporter.add(entry.line, path, "needs exactly one of webhook, command")
        return None
    kind = kinds[0]
    target = get_str(reporter, entry.entries[kind], path=join(path, kind), echo=False)
    if target is None:
        return None
    problem = webhook_problem(target) if kind == "webhook" else None
    if kind == "command":
        problem = command_problem(target)
    if problem is not None:
        reporter.add(entry.entries[kind].line, join(path, kind), problem)
        return None
    timeout = NotifierSpec.timeout
    if "timeout" in entry.entries:
        seconds = get_duration(
            reporter, entry.entries["timeout"], path=join(path, "timeout"), positive=True,
            maximum=MAX_NOTIFY_TIMEOUT,
        )  # fmt: skip
        if seconds is None:
            return None
        timeout = seconds
    secret = None
    if "secret" in entry.entries:
        secret = parse_secret(reporter, entry.entries["secret"], path=join(path, "secret"))
        if secret is None:
            return None
    events: list[str] = []
    if "events" in entry.entries:
        events_node = entry.entries["events"]
        if not isinstance(events_node, YSeq):
            reporter.add(events_node.line, join(path, "events"), "must be a list of event kinds")
            return None
        for n, item in enumerate(events_node.items):
            choice = get_choice(reporter, item, path=f"{path}.events[{n}]", choices=EVENT_KINDS)
            if choice is None:
                return None
            events.append(choice)
    return NotifierSpec(
        kind=kind, target=target, secret=secret, events=tuple(events), timeout=timeout
    )


def webhook_problem(url: str) -> str | None:
    """Why `url` cannot be POSTed to, or None. Never quotes the URL: webhook URLs often
    carry their token in the path."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "must be an http(s) URL without spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        return "must be an http(s) URL with a valid host and port"
    if parts.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    if not parts.hostname:
        return "must be an http(s) URL with a host"
    if port == 0:
        return "must be an http(s) URL with a port from 1 to 65535"
    return None
