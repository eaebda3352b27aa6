"""One writer per state directory: an advisory lock held for the process's lifetime.

Owns: `flock` on `<state_dir>/lock`, with the holder's pid written inside so a refused
process can say who holds it. Must not: block — a second daemon or `apply` on the same
state exits at once; readers (`plan`, `ledger ...`) never take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from reconciler.errors import StateLocked, StateUnusable


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "lock"
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            # A read-only or full file system, a state "directory" that is a file, a
            # lock that is a directory or a symlink: say which, not a traceback.
            raise StateUnusable(
                f"cannot take the lock {self.path}: {exc.strerror or exc}; the state "
                "directory must be a writable directory, and its `lock` a file this "
                "process can create"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"state directory {self.path.parent} is in use by another reconciler "
                f"(pid {holder}); stop it first or use another --state-dir",
                holder=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
