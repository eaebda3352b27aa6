"""Logging: structlog configured once, to stderr, with secrets kept out.

Owns: the processor chain (console on a terminal, JSON lines otherwise) and the
redaction of secret-looking keys. Must not: be configured anywhere else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from reconciler.redact import redact_urls

_SECRET_WORDS = ("secret", "password", "token", "credential", "user_data", "authorization")


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "[redacted]"
        else:
            event[key] = _scrub(event[key])
    return event


def _scrub(value: Any) -> Any:
    """URL credentials out of every logged string, however deep (a `--repo` with a
    token, git's error quoting it, an exception's text)."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def configure_logging(*, fmt: str = "auto", verbose: bool = False, quiet: bool = False) -> None:
    """Send structured logs to stderr; stdout stays for command output (`--json`)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # quiet: warnings and errors only (the demo narrates; its log lines would drown it).
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            _redact,  # again: a formatted traceback can quote a URL too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through stdlib logging go to stderr too, quietly unless asked.
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
