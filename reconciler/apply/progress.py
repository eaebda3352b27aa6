"""Apply progress for people: a rich progress bar on a terminal, log lines otherwise.

Owns: showing how far an apply has got (actions done of planned, by kind). On a TTY a
rich progress display on stderr; elsewhere (systemd, CI, pipes) one structured
`apply_progress` line at most every `every` seconds and one at the end. Must not:
write to stdout (`--json` owns it), decide or count anything the ledger records, or
slow the apply (updates are cheap and thread-safe; the display refreshes on its own).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from threading import Lock
from typing import Protocol, TextIO

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from reconciler.logs import print_above_live

log = structlog.get_logger(__name__)


class ProgressHook(Protocol):
    """What the applier reports: the planned total, each finished action, the end."""

    def start(self, total: int) -> None: ...

    def advance(self, kind: str, n: int = 1) -> None: ...

    def phase(self, text: str) -> None:
        """What the apply waits for now (boot, health gate): the bar says it."""
        ...

    def finish(self) -> None: ...


class NoProgress:
    """Reports nothing (library use, tests)."""

    def start(self, total: int) -> None:
        return None

    def advance(self, kind: str, n: int = 1) -> None:
        return None

    def phase(self, text: str) -> None:
        return None

    def finish(self) -> None:
        return None


class LogProgress:
    """Periodic `apply_progress` log lines: what a journal or CI log can follow."""

    def __init__(self, *, every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._lock = Lock()
        self._total = 0
        self._done: dict[str, int] = {}
        self._started = 0.0
        self._last = 0.0

    def start(self, total: int) -> None:
        with self._lock:
            self._total, self._done = total, {}
            self._started = self._last = self._clock()

    def advance(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._done[kind] = self._done.get(kind, 0) + n
            now = self._clock()
            if now - self._last < self.every:
                return
            self._last = now
            fields = self._fields(now)
        log.info("apply_progress", **fields)

    def phase(self, text: str) -> None:
        log.debug("apply_phase", phase=text)  # the journal has each step's own line

    def finish(self) -> None:
        with self._lock:
            if not self._total:
                return
            fields = self._fields(self._clock())
        log.info("apply_progress", final=True, **fields)

    def _fields(self, now: float) -> dict[str, object]:
        return {
            "done": sum(self._done.values()),
            "total": self._total,
            "by_kind": dict(sorted(self._done.items())),
            "seconds": round(now - self._started, 1),
        }


class RichProgress:
    """A progress bar on the terminal's stderr, removed when the apply ends."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("[bold]apply[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=True,
            redirect_stderr=False,  # our log lines come through print_above_live instead
        )
        self._task: TaskID | None = None
        self._done: dict[str, int] = {}
        self._phase = ""
        self._lock = Lock()

    def start(self, total: int) -> None:
        with self._lock:
            self._done = {}
            self._task = self._progress.add_task("apply", total=total, detail="")
        print_above_live(self._print_line)
        self._progress.start()

    def _print_line(self, line: str) -> None:
        # soft_wrap: the terminal wraps a long line, rich does not cut it into lines.
        self._progress.console.print(Text(line), soft_wrap=True, highlight=False)

    def advance(self, kind: str, n: int = 1) -> None:
        with self._lock:
            if self._task is None:
                return
            self._done[kind] = self._done.get(kind, 0) + n
            self._progress.update(self._task, advance=n, detail=self._detail())

    def phase(self, text: str) -> None:
        with self._lock:
            if self._task is None:
                return
            self._phase = text
            self._progress.update(self._task, detail=self._detail())

    def _detail(self) -> str:
        done = " ".join(f"{k} {v}" for k, v in sorted(self._done.items()))
        return f"{done}  {self._phase}".strip()

    def finish(self) -> None:
        self._progress.stop()
        print_above_live(None)


def progress_for(stream: TextIO | None = None) -> ProgressHook:
    """Rich on a terminal, log lines elsewhere."""
    stream = stream or sys.stderr
    return RichProgress(stream) if stream.isatty() else LogProgress()
