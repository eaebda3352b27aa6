"""The daemon's git source: fetch a branch with a hard timeout, check out exact commits.

Owns: a private clone under the state directory, `git` subprocesses that can never
prompt (no terminal prompt, no askpass, no credential helper, SSH in batch mode), the
timeout that kills a hung fetch, and commit metadata. Must not: apply anything, or
check out a moving ref — the daemon always reconciles the sha it fetched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from reconciler.errors import FetchFailed
from reconciler.redact import redact_urls

# Environment for every git call: fail instead of asking anybody anything.
_NO_PROMPT = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=15",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
_NO_HELPERS = ["-c", "credential.helper=", "-c", "core.askPass=/bin/false"]
_POLL = 0.25
_ERROR_CHARS = 2000


def _local_path(remote: str) -> str | None:
    """The absolute path of a local repository (a path or a file:// URL), else None."""
    if remote.startswith("file://"):
        return os.path.abspath(unquote(urlsplit(remote).path))
    if "://" in remote or (":" in remote.split("/", 1)[0] and not remote.startswith("/")):
        return None  # a URL, or scp-like user@host:path
    return os.path.abspath(remote)


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    subject: str
    committed_at: str


class GitSource:
    """A branch of a remote (URL or local path), mirrored into `workdir`."""

    def __init__(
        self,
        remote: str,
        *,
        branch: str,
        workdir: Path,
        timeout: float = 60.0,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.remote = remote
        self.branch = branch
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.heartbeat = heartbeat
        self._ref = f"refs/reconciler/{branch}"
        # A local repository (a path or file://) may belong to another user than the
        # daemon (DynamicUser=): git refuses it as "dubious ownership" unless told that
        # exactly this path is safe. Only this path, never `*`; and through a global
        # config file of our own, since git reads safe.directory from no other scope
        # we can set (`-c` is ignored for it, and the system file is off).
        self._safe_directory = _local_path(remote)
        self._config_written = False

    # ------------------------------------------------------------ plumbing

    def _git(self, *args: str, timeout: float | None = None) -> str:
        """Run git; poll so the watchdog keeps being fed, kill the group at the timeout."""
        home = tempfile.gettempdir()  # no user config: HOME points at nothing of ours
        env = {**os.environ, **_NO_PROMPT, "HOME": home, "XDG_CONFIG_HOME": home}
        if self._safe_directory is not None:
            env["GIT_CONFIG_GLOBAL"] = str(self._git_config(self._safe_directory))
        command = ["git", *_NO_HELPERS, "-C", str(self.workdir), *args]
        deadline = time.monotonic() + (timeout or self.timeout)
        with subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group, so a kill takes helpers too
        ) as process:
            # communicate() in short slices: it returns the moment git exits (no fixed
            # sleep per command) and keeps draining both pipes, so a large output cannot
            # fill a pipe and stall git until the timeout.
            while True:
                self.heartbeat()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.communicate()
                    raise FetchFailed(
                        f"git {args[0]} timed out after {timeout or self.timeout:.0f}s"
                    )
                try:
                    stdout, stderr = process.communicate(timeout=min(_POLL, remaining))
                    break
                except subprocess.TimeoutExpired:
                    continue
        if process.returncode != 0:
            # All of it: git's cause is often on an earlier line than its last ("detected
            # dubious ownership ... and the repository exists."). Bounded, credentials out.
            lines = redact_urls(stderr.decode(errors="replace")).strip().splitlines()
            message = " | ".join(line.strip() for line in lines if line.strip())
            if len(message) > _ERROR_CHARS:
                message = message[: _ERROR_CHARS - 3] + "..."
            raise FetchFailed(f"git {args[0]} failed: {message or 'no output'}")
        return stdout.decode(errors="replace").strip()

    def _git_config(self, local: str) -> Path:
        """The git config file naming `local` safe, written once per source (git runs
        several times a pass; the file does not change)."""
        path = self.workdir.parent / "reconciler.gitconfig"
        if self._config_written:
            return path
        quoted = [
            '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for p in (local, f"{local}/.git")
        ]
        text = "[safe]\n" + "".join(f"\tdirectory = {q}\n" for q in quoted)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(text)
        self._config_written = True
        return path

    def _ensure_repository(self) -> None:
        if (self.workdir / ".git").is_dir():
            return
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._git("init", "-q")

    # ------------------------------------------------------------ the source's API

    def fetch(self) -> str:
        """Fetch the branch; return the sha it points to now."""
        self._ensure_repository()
        self._git(
            "fetch", "--no-tags", "--quiet", "--force", self.remote,
            f"+refs/heads/{self.branch}:{self._ref}",
        )  # fmt: skip
        return self._git("rev-parse", "--verify", f"{self._ref}^{{commit}}")

    def checkout(self, sha: str, *, subdir: str = "") -> Path:
        """Detached checkout of exactly `sha`; returns where its desired-state directory
        should be. What is there is the commit's: a symlink, a file, nothing; the caller
        checks it (`checked_out_directory`) before reading anything."""
        self._git("checkout", "--quiet", "--force", "--detach", sha)
        self._git("clean", "-q", "-ffdx")
        return self.workdir / subdir

    def descends_from(self, ancestor: str, sha: str) -> bool:
        """Whether `sha` has `ancestor` in its history (False for a rewritten branch)."""
        try:
            self._git("merge-base", "--is-ancestor", ancestor, sha)
        except FetchFailed:
            return False
        return True

    def has_commit(self, sha: str) -> bool:
        try:
            self._git("cat-file", "-e", f"{sha}^{{commit}}")
        except FetchFailed:
            return False
        return True

    def info(self, sha: str) -> CommitInfo:
        fields = self._git("show", "-s", "--format=%an <%ae>%x00%s%x00%cI", sha).split("\x00")
        author, subject, committed_at = [*fields, "", "", ""][:3]
        return CommitInfo(sha=sha, author=author, subject=subject, committed_at=committed_at)
