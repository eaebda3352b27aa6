"""Logging: structlog configured once, to stderr, with secrets kept out.

Owns: the processor chain (console on a terminal, JSON lines otherwise) and the
redaction of secret-looking keys. Must not: be configured anywhere else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
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


# syslog priorities, as the `<N>` prefix journald reads from a service's stderr: what
# `journalctl -p err` filters on.
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _journal_line(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    """`<3>service_down env=prod service=db why="..."`: the priority prefix, then the
    event and its fields as logfmt, which becomes the entry's MESSAGE."""
    priority = _PRIORITY.get(str(event.pop("level", "info")), 6)
    event.pop("timestamp", None)  # journald stamps every entry itself
    name = str(event.pop("event", ""))
    fields = _LOGFMT(_logger, _name, event) if event else ""
    return f"<{priority}>{name} {fields}".rstrip()


_LOGFMT = structlog.processors.LogfmtRenderer()


def under_journald() -> bool:
    """Whether stderr is systemd's journal stream (JOURNAL_STREAM names its device and
    inode), as systemd documents for choosing the journal's native conventions."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def colors_wanted() -> bool:
    """Color on a terminal only, and never when NO_COLOR is set (no-color.org)."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


LinePrinter = Callable[[str], None]
_above_live: LinePrinter | None = None


def print_above_live(printer: LinePrinter | None) -> None:
    """While a live display (the progress bar) is on the terminal, log lines go to
    `printer`, which prints each whole line above the display; None: to stderr again."""
    global _above_live
    _above_live = printer


class _LogStream:
    """stderr, or the live display's printer while one runs: a log line is never glued
    onto the progress bar, and never re-wrapped (a JSON line stays one line)."""

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        printer = _above_live
        if printer is None:
            return sys.stderr.write(text)
        self._pending += text
        while "\n" in self._pending:
            line, _, self._pending = self._pending.partition("\n")
            printer(line)
        return len(text)

    def flush(self) -> None:
        if _above_live is None:
            sys.stderr.flush()


_LOG_STREAM = _LogStream()


def configure_logging(*, fmt: str = "auto", verbose: bool = False, quiet: bool = False) -> None:
    """Send structured logs to stderr; stdout stays for command output (`--json`)."""
    if fmt == "auto":
        fmt = "journal" if under_journald() else "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "journal":
        renderer = _journal_line
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors_wanted())
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
        logger_factory=structlog.PrintLoggerFactory(file=_LOG_STREAM),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries that log through stdlib logging go to stderr too, quietly unless asked.
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
