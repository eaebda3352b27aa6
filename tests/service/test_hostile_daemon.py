"""The hostile-input corpus through the daemon: one real daemon follows a real git
remote while every case is pushed as the new head, one after another.

For each case the daemon must stay alive, record the commit as invalid with the
problem located (file, line and key, in its own checkout), change nothing in the
cloud, and go on. Last, with a broken commit still at the head, an instance
terminated behind its back must be healed against the last good commit.

Cases git cannot hold (a FIFO, an empty directory) are listed in UNREPRESENTABLE and
checked through the CLI only (tests/desired/test_hostile_input.py); the guard cases (exit 3)
are valid states a guard refuses, not invalid commits.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from tests.conftest import mutating_calls
from tests.support.cloud import live_nodes, raw_driver
from tests.support.daemon_support import GIT_ENV, DaemonProcess, wait_for
from tests.support.desired_builder import git_commit
from tests.support.hostile_corpus import Case, build_case, load_cases

CASES = load_cases()


def _unrepresentable(root: Path) -> str | None:
    """Why git could not commit this tree as it is, or None."""
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return "a FIFO or socket"
        if stat.S_ISDIR(mode) and not any(path.iterdir()):
            return "an empty directory"
    return None


class Repo:
    def __init__(self, root: Path, endpoint: str) -> None:
        self.root, self.endpoint = root, endpoint
        self.bare = root / "remote.git"
        self.work = root / "work"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True)
        self.work.mkdir()

    def push_case(self, case: Case) -> tuple[str, str | None]:
        """Make `desired/` the case's tree, commit, push; (sha, why it was not pushed)."""
        staged = self.root / "staged" / case.name
        build_case(case, staged, endpoint=self.endpoint)
        why = _unrepresentable(staged)
        if why is not None:
            return "", why
        target = self.work / "desired"
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        shutil.copytree(staged, target, symlinks=True)
        return self.commit(case.name), None

    def push_path_as(self, kind: str, outside: Path) -> str:
        """Make the daemon's --path itself something other than a directory."""
        target = self.work / "desired"
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        if kind == "link-outside":
            target.symlink_to(outside)
        elif kind == "link-loop":
            target.symlink_to("desired")
        else:
            target.write_text("owner: acme\n")
        return self.commit(f"--path as {kind}")

    def commit(self, message: str) -> str:
        sha = git_commit(self.work, message)
        subprocess.run(
            ["git", "-C", str(self.work), "push", "-q", "--force", str(self.bare),
             "HEAD:refs/heads/main"],
            check=True, env={**os.environ, **GIT_ENV}, capture_output=True,
        )  # fmt: skip
        return sha


def invalid_commits(state: Path) -> dict[str, list[str]]:
    # Polled: a read-only listing, without the integrity check of a writer's open.
    with Ledger.open(state, check="none") as ledger:
        rows = ledger.event_rows(kind="invalid_commit")
    return {row["detail"]["commit"]: row["detail"]["errors"] for row in rows}


@pytest.fixture
def daemon_on_base(
    tmp_path: Path, sandbox: SandboxServer
) -> Iterator[tuple[Repo, DaemonProcess, Path]]:
    repo = Repo(tmp_path, sandbox.endpoint)
    repo.push_case(Case("base", 0, "", None, "", ""))
    state = tmp_path / "state"
    # A long interval: each push is followed by SIGHUP, which starts a pass at once.
    daemon = DaemonProcess(
        state_dir=state, repo=str(repo.bare), log_path=tmp_path / "d.log", interval="1h"
    )
    try:
        wait_for(lambda: len(live_nodes(sandbox.endpoint)) == 3, timeout=120, what="the fleet")
        yield repo, daemon, state
    finally:
        daemon.stop()


def test_every_hostile_commit_is_recorded_invalid_and_the_daemon_keeps_healing(
    daemon_on_base: tuple[Repo, DaemonProcess, Path], sandbox: SandboxServer, tmp_path: Path
) -> None:
    repo, daemon, state = daemon_on_base
    checkout = state / "source" / "desired"
    baseline = mutating_calls(sandbox.endpoint)
    skipped: dict[str, str] = {}
    checked: list[str] = []
    for case in CASES:
        if case.exit != 1:
            skipped[case.name] = "a guard case: valid, refused by a guard"
            continue
        sha, why = repo.push_case(case)
        if why is not None:
            skipped[case.name] = why
            continue
        daemon.signal(signal.SIGHUP)
        errors: list[str] = wait_for(
            lambda sha=sha: invalid_commits(state).get(sha), timeout=60, what=case.name
        )
        assert daemon.process.poll() is None, f"{case.name}: the daemon exited"
        where = os.path.join(str(checkout), case.file) if case.file else str(checkout)
        where += f":{case.line}" if case.line is not None else ""
        key = f" {case.key}:" if case.key else ""
        assert errors[0].startswith(f"{where}:{key}"), (case.name, errors[0])
        assert case.message in errors[0], (case.name, errors[0])
        assert mutating_calls(sandbox.endpoint) == baseline, case.name
        checked.append(case.name)

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "reconciler.yaml").write_text("owner: acme\n")
    for kind, message in (("link-outside", "resolves (through a symlink) outside the repository"),
                          ("link-loop", "is a symlink loop"),
                          ("file", "is a regular file, not a directory")):  # fmt: skip
        sha = repo.push_path_as(kind, outside)
        daemon.signal(signal.SIGHUP)
        errors = wait_for(lambda sha=sha: invalid_commits(state).get(sha), what=kind)
        assert errors == [f"{checkout}: --path desired {message}"], (kind, errors)
        assert daemon.process.poll() is None

    assert len(checked) >= 80, (len(checked), skipped)
    assert "Traceback" not in daemon.log()
    # A broken commit is still the head: the daemon heals against the last good one.
    victim = live_nodes(sandbox.endpoint)[0]
    raw_driver(sandbox.endpoint).destroy_node(victim)
    daemon.signal(signal.SIGHUP)

    def healed() -> Any:
        alive = live_nodes(sandbox.endpoint)
        return len(alive) == 3 and victim.id not in {n.id for n in alive}

    wait_for(healed, timeout=120, what="the terminated instance replaced")
    assert daemon.process.poll() is None
