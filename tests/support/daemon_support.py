"""Harness for daemon tests: a bare git remote, a notify socket, the daemon as a process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.desired_builder import git_commit, write_desired

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Ada Operator",
    "GIT_AUTHOR_EMAIL": "ada@example.invalid",
    "GIT_COMMITTER_NAME": "Ada Operator",
    "GIT_COMMITTER_EMAIL": "ada@example.invalid",
}


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; generous timeouts, no timing assertions."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.2)


class Remote:
    """A bare repository (the daemon's remote) and a clone we commit and push from."""

    def __init__(self, root: Path, endpoint: str) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.endpoint = endpoint
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True)
        self.work.mkdir()

    def push(self, environments: dict[str, Any], message: str, **options: Any) -> str:
        write_desired(
            self.work / "desired", endpoint=self.endpoint, environments=environments, **options
        )
        sha = git_commit(self.work, message)
        self._git("push", "-q", "--force", str(self.bare), "HEAD:refs/heads/main")
        return sha

    def push_file(self, relative: str, text: str, message: str) -> str:
        path = self.work / "desired" / relative
        path.write_text(text)
        sha = git_commit(self.work, message)
        self._git("push", "-q", "--force", str(self.bare), "HEAD:refs/heads/main")
        return sha

    def rewrite_history(self, environments: dict[str, Any], message: str) -> str:
        """Replace the branch with an unrelated root commit (a force-push of new history)."""
        shutil.rmtree(self.work / ".git")
        return self.push(environments, message)

    def _git(self, *args: str) -> None:
        subprocess.run(
            ["git", "-C", str(self.work), *args], check=True, env=GIT_ENV, capture_output=True
        )


@dataclass
class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    path: str = ""
    messages: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # sun_path holds 108 bytes: a short directory of our own, not pytest's tmp_path.
        self._dir = tempfile.mkdtemp(prefix="rn")
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self, name: str) -> list[str]:
        found = []
        for _, message in list(self.messages):
            for line in message.split("\n"):
                key, _, value = line.partition("=")
                if key == name:
                    found.append(value)
        return found

    def count(self, line: str, *, since: float = 0.0) -> int:
        return sum(
            1 for at, message in list(self.messages) if at >= since and line in message.split("\n")
        )

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)


class DaemonProcess:
    def __init__(
        self,
        *,
        state_dir: Path,
        repo: str,
        log_path: Path,
        notify: NotifySocket | None = None,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        watchdog_usec: int | None = None,
        interval: str = "1s",
    ) -> None:
        inherited = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY")
        environ = {k: v for k, v in os.environ.items() if k not in inherited}
        environ.update(env or {})
        if notify is not None:
            environ["NOTIFY_SOCKET"] = notify.path
        if watchdog_usec is not None:
            environ["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_path = log_path
        self._log = open(log_path, "a")  # noqa: SIM115 - closed in wait()/stop()
        command = [
            sys.executable, "-m", "reconciler", "--state-dir", str(state_dir),
            "--log-format", "json", "daemon", "--repo", repo, "--branch", "main",
            "--path", "desired", "--interval", interval, *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=environ
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(timeout=10)


class HangingServer:
    """Accepts TCP connections on loopback and never answers: a hung git remote."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # hold it open, read nothing, say nothing

    def close(self) -> None:
        self._stop.set()
        for conn in self._held:
            conn.close()
        self._sock.close()
        self._thread.join(timeout=5)
