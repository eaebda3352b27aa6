"""The operator's checkout of the desired-state repository, as promotion uses it.

Owns: the git commands of a promotion (is it clean, which branch and remote, fetch,
fast-forward, commit one file, push without force, start again from the remote's
head), run with the operator's own git configuration, so a commit is signed when
their git signs commits. Must not: force anything (no `push --force`, no reset over
commits that are not the promotion's own), or decide what to commit.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from reconciler.errors import GitFailed, PromotionRefused

GIT_TIMEOUT: Final = 120.0  # seconds; a fetch or push over a slow link
# What git says when a push is refused because the remote moved on.
_REJECTED: Final = ("[rejected]", "non-fast-forward", "fetch first", "failed to update ref")


@dataclass(frozen=True)
class PushOutcome:
    pushed: bool
    rejected: bool  # the remote has commits this push does not contain: fetch and redo
    detail: str


class Checkout:
    def __init__(self, path: Path) -> None:
        top = self._run(path, "rev-parse", "--show-toplevel", what="find the repository")
        self.root = Path(top.strip())

    # ------------------------------------------------------------ reading

    def head(self) -> str:
        return self.git("rev-parse", "HEAD", what="read HEAD").strip()

    def branch(self) -> str:
        name = self.git("symbolic-ref", "-q", "--short", "HEAD", what="read the branch",
                        check=False).strip()  # fmt: skip
        if not name:
            raise PromotionRefused(
                [f"{self.root}: HEAD is detached; check out the branch to promote on"]
            )
        return name

    def remote(self, branch: str) -> str:
        configured = self.git("config", "--get", f"branch.{branch}.remote", what="read the "
                              "remote", check=False).strip()  # fmt: skip
        return configured or "origin"

    def dirty(self) -> list[str]:
        """Tracked files with changes (staged or not), and an unfinished merge or rebase:
        a promotion commit must carry its own change and nothing else. Untracked files
        are never committed by it, so they do not count."""
        status = self.git("status", "--porcelain", "--untracked-files=no", what="read status")
        changed = [line[3:] for line in status.splitlines() if line.strip()]
        for marker in ("MERGE_HEAD", "REBASE_HEAD", "CHERRY_PICK_HEAD"):
            if self.git("rev-parse", "-q", "--verify", marker, what="check", check=False).strip():
                changed.append(f"({marker.lower()} in progress)")
        return changed

    def is_ancestor(self, older: str, newer: str) -> bool:
        done = self._completed("merge-base", "--is-ancestor", older, newer)
        return done.returncode == 0

    # ------------------------------------------------------------ changing

    def fetch(self, remote: str, branch: str) -> str:
        """The remote branch's head, fetched."""
        self.git("fetch", "-q", remote, f"refs/heads/{branch}", what=f"fetch {remote} {branch}")
        return self.git("rev-parse", "FETCH_HEAD", what="read FETCH_HEAD").strip()

    def fast_forward(self, to: str) -> None:
        self.git("merge", "-q", "--ff-only", to, what="fast-forward to the remote's head")

    def reset_own_commit(self, to: str) -> None:
        """Drop the promotion's own commit (HEAD, whose parent the remote has moved past)
        and stand on the remote's head, to make the change again there."""
        self.git("reset", "-q", "--hard", to, what="start again from the remote's head")

    def commit(self, path: Path, message: str) -> str:
        relative = str(path.relative_to(self.root))
        self.git("add", "--", relative, what=f"stage {relative}")
        self.git("commit", "-q", "-F", "-", "--", relative, what="commit", stdin=message)
        return self.head()

    def push(self, remote: str, branch: str) -> PushOutcome:
        done = self._completed("push", "--porcelain", remote, f"HEAD:refs/heads/{branch}")
        text = (done.stdout + done.stderr).strip()
        if done.returncode == 0:
            return PushOutcome(pushed=True, rejected=False, detail=text)
        rejected = any(marker in text for marker in _REJECTED)
        return PushOutcome(pushed=False, rejected=rejected, detail=_last_line(text))

    # ------------------------------------------------------------ plumbing

    def git(
        self, *args: str, what: str, check: bool = True, stdin: str | None = None
    ) -> str:
        done = self._completed(*args, stdin=stdin)
        if check and done.returncode != 0:
            raise GitFailed(f"git could not {what} in {self.root}: {_last_line(done.stderr)}")
        return done.stdout

    def _completed(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return _git(self.root, *args, stdin=stdin)

    @staticmethod
    def _run(path: Path, *args: str, what: str) -> str:
        done = _git(path, *args)
        if done.returncode != 0:
            raise PromotionRefused([f"{path} is not a git checkout ({what}: "
                                    f"{_last_line(done.stderr)})"])  # fmt: skip
        return done.stdout


def _git(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # The operator's own configuration (identity, signing) applies; only prompts are
    # off, so a missing credential fails instead of waiting for a terminal.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(
            ["git", "-C", str(cwd), *args], input=stdin, capture_output=True, text=True,
            timeout=GIT_TIMEOUT, check=False, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git {args[0]} did not finish within {GIT_TIMEOUT:g}s") from None
    except OSError as exc:
        raise GitFailed(f"git could not run: {exc.strerror or type(exc).__name__}") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
