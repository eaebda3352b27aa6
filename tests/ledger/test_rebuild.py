"""`ledger rebuild`: a lost ledger is reconstructed from the cloud's tags, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from tests.conftest import Cli, mutating_calls
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, git_commit, write_desired

KEYS = ("env", "service", "number", "state", "fingerprint", "count")


def fleet(web_image: str) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "production": {
            "web": {"image": web_image, "count": 2},
            "api": {"image": IMAGE_V1, "count": 1},
        },
        "staging": {"web": {"image": IMAGE_V1, "count": 1}},
    }


def live_generations(cli: Cli) -> list[tuple[Any, ...]]:
    result = cli("ledger", "generations", "--json")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)
    return sorted(
        tuple(row[k] for k in KEYS) for row in rows if row["state"] in ("active", "standby")
    )


@pytest.fixture
def converged(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> Path:
    """Three services converged, then production/web bumped: it has a standby."""
    root = write_desired(
        tmp_path / "desired", endpoint=sandbox.endpoint, environments=fleet(IMAGE_V1)
    )
    git_commit(root, "v1")
    assert cli("apply", "--desired", str(root)).code == 0
    write_desired(root, endpoint=sandbox.endpoint, environments=fleet(IMAGE_V2))
    git_commit(root, "web v2")
    result = cli("apply", "--desired", str(root))
    assert result.code == 0, result.stderr
    return root


def test_rebuild_after_losing_the_ledger_reproduces_the_live_generations(
    cli: Cli, converged: Path, sandbox: SandboxServer
) -> None:
    original = live_generations(cli)
    assert ("production", "web", 1, "standby") in [row[:4] for row in original]
    for suffix in ("", "-wal", "-shm"):
        (cli.state_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)

    result = cli("ledger", "rebuild", "--desired", str(converged), "--json")

    assert result.code == 0, result.stderr
    assert "cost history before this point are gone" in result.stderr
    document = json.loads(result.stdout)
    assert document["instances"] == 6 and document["backup"] is None
    assert live_generations(cli) == original
    with Ledger.open(cli.state_dir) as ledger:
        assert [e["kind"] for e in ledger.event_rows(kind="ledger_rebuilt")] == ["ledger_rebuilt"]
        assert ledger.open_operations() == []

    before = mutating_calls(sandbox.endpoint)
    again = cli("apply", "--desired", str(converged), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []
    assert mutating_calls(sandbox.endpoint) == before


def test_rebuild_refuses_a_ledger_with_generations_unless_yes_and_keeps_it(
    cli: Cli, converged: Path
) -> None:
    original = live_generations(cli)

    refused = cli("ledger", "rebuild", "--desired", str(converged))
    assert refused.code == 1
    assert "--yes" in refused.stderr
    assert live_generations(cli) == original

    forced = cli("ledger", "rebuild", "--desired", str(converged), "--yes", "--json")
    assert forced.code == 0, forced.stderr
    backup = Path(json.loads(forced.stdout)["backup"])
    assert backup.parent == cli.state_dir and backup.name.startswith("ledger.sqlite.bak-")
    assert backup.exists()
    assert live_generations(cli) == original
    # The old ledger is intact beside the new one, history and all.
    with Ledger.open(cli.state_dir) as new, _open_copy(backup) as old:
        assert len(old.run_rows()) == 2 and new.run_rows() == []


def _open_copy(backup: Path) -> Ledger:
    """The backup as a ledger of its own state directory (Ledger.open takes a directory)."""
    state = backup.parent / "old-state"
    state.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = backup.with_name(backup.name + suffix)
        if source.exists():
            (state / f"ledger.sqlite{suffix}").write_bytes(source.read_bytes())
    return Ledger.open(state)


def test_an_unreadable_ledger_is_set_aside_with_yes(cli: Cli, converged: Path) -> None:
    original = live_generations(cli)
    for suffix in ("-wal", "-shm"):
        (cli.state_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    (cli.state_dir / "ledger.sqlite").write_bytes(b"not a database, " * 512)

    refused = cli("ledger", "rebuild", "--desired", str(converged))
    assert refused.code == 1 and "--yes" in refused.stderr

    forced = cli("ledger", "rebuild", "--desired", str(converged), "--yes")
    assert forced.code == 0, forced.stderr
    assert "moved to" in forced.stderr
    assert live_generations(cli) == original
    backups = list(cli.state_dir.glob("ledger.sqlite.bak-*"))
    assert [b.read_bytes()[:16] for b in backups] == [b"not a database, "]


def test_a_rebuild_killed_at_any_moment_leaves_a_whole_ledger(cli: Cli, converged: Path) -> None:
    """SIGKILL at several moments of a real `ledger rebuild --yes`: afterwards the
    ledger is the old one or the new one, each whole, never one with part of the
    generations (the rest of the instances then unrecorded, costing $0.00)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    original = live_generations(cli)
    command = [sys.executable, "-m", "reconciler", "--state-dir", str(cli.state_dir),
               "--log-format", "json", "ledger", "rebuild", "--desired", str(converged),
               "--yes"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}

    def started_writing() -> bool:
        return any(cli.state_dir.glob(".rebuild-*")) or any(
            cli.state_dir.glob("ledger.sqlite.bak-*")
        )

    # First the moment the rebuild starts writing (polled closely), then later moments.
    for trial in ("writing", "writing", 0.8, 1.6, 3.0):
        for stale in cli.state_dir.glob("ledger.sqlite.bak-*"):
            stale.unlink()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + (30.0 if trial == "writing" else float(trial))
        while time.monotonic() < deadline and process.poll() is None:
            if trial == "writing" and started_writing():
                break
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert live_generations(cli) == original, f"killed at {trial}"
    finished = cli("ledger", "rebuild", "--desired", str(converged), "--yes")
    assert finished.code == 0, finished.stderr
    assert live_generations(cli) == original
    assert list(cli.state_dir.glob(".rebuild-*")) == []
