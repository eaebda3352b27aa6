"""A state directory the reconciler cannot use gets a one-line error that names the
path and tells the truth about what to do; never a traceback, and never the advice to
move the ledger aside (which throws history away) unless the file is damaged."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.ledger.connection import advice
from tests.support.desired_builder import IMAGE_V1, write_desired


def _reconciler(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["lock-is-a-directory", "state-is-a-file", "lock-symlink"])
def test_an_unusable_state_directory_is_a_clear_error(tmp_path: Path, layout: str) -> None:
    state = tmp_path / "state"
    if layout == "state-is-a-file":
        state.write_text("not a directory\n")
    else:
        state.mkdir()
        if layout == "lock-is-a-directory":
            (state / "lock").mkdir()
        else:
            (state / "lock").symlink_to(tmp_path / "elsewhere")
    desired = write_desired(tmp_path / "d", endpoint="http://127.0.0.1:9",
                            environments={"prod": {"web": {"image": IMAGE_V1}}})  # fmt: skip

    result = _reconciler(state, "apply", "--desired", str(desired))

    assert "Traceback" not in result.stderr
    assert "ledger rebuild" not in result.stderr
    if layout == "state-is-a-file":  # refused by the option itself: a usage error, never 2
        assert result.returncode == 1 and "is a file" in result.stderr
    else:
        assert result.returncode == 1
        assert f"cannot take the lock {state / 'lock'}" in result.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 2 MiB (tmpfs), mounted for the test and unmounted after."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_reported_as_such_and_the_ledger_kept(small_disk: Path) -> None:
    state = small_disk / "state"
    script = textwrap.dedent(f"""
        from datetime import UTC, datetime
        from pathlib import Path
        from reconciler.errors import LedgerError
        from reconciler.ledger import Ledger
        try:
            with Ledger.open(Path({str(state)!r})) as ledger:
                for n in range(100000):
                    ledger.record_event(kind="invalid_commit", at=datetime.now(UTC),
                                        detail={{"pad": "x" * 4000}})
        except LedgerError as exc:
            print(exc)
    """)

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip

    assert "is full" in done.stdout, done.stdout + done.stderr
    assert "ledger rebuild" not in done.stdout
    assert "Traceback" not in done.stderr
    with sqlite3.connect(state / "ledger.sqlite") as conn:  # intact and readable
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_the_advice_follows_the_failure() -> None:
    path = Path("/var/lib/reconciler/ledger.sqlite")
    readonly = advice(sqlite3.OperationalError("attempt to write a readonly database"), path)
    assert "must be writable" in readonly and "rebuild" not in readonly
    assert "ledger rebuild" in advice(sqlite3.DatabaseError("file is not a database"), path)
    assert "retry" in advice(sqlite3.OperationalError("database is locked"), path)
