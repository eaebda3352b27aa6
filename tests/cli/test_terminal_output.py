"""What reaches a terminal from commits, the ledger and paths is shown as text: rich
markup is escaped (`[/x]` does not crash, `[link=...]` is no link) and control
characters are made visible (an ESC in a commit subject cannot clear the screen).
Through the real CLI, in human (not JSON) output."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from reconciler.ledger import Ledger
from tests.conftest import Cli

HOSTILE = "[/x] [link=http://evil.example]click[/link] \x1b[2J\x9b31m\r\x07\u202e"


def _assert_shown_as_text(output: str) -> None:
    for raw in ("\x1b", "\x9b", "\r", "\x07", "\u202e"):
        assert raw not in output, repr(output)
    assert "Traceback" not in output and "MarkupError" not in output
    assert "\\x1b[2J" in output and "\\u202e" in output
    assert "[/x]" in output and "[link=http://evil.example]click[/link]" in output


def test_status_shows_a_hostile_commit_subject_as_text(cli: Cli, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state") as ledger:
        ledger.record_commit(
            "c0ffee" * 6 + "abcd", author=HOSTILE, subject=HOSTILE, committed_at=None,
            valid=False, at=datetime.now(UTC), errors=[f"file.yaml:1: key: {HOSTILE}"],
        )  # fmt: skip

    human = cli("status")
    machine = cli("status", "--json")

    assert human.code == 0, human.stderr
    _assert_shown_as_text(human.stdout + human.stderr)
    assert json.loads(machine.stdout)["invalid_commit"]["subject"] == HOSTILE


def test_problems_under_a_hostile_directory_name_are_shown_as_text(
    cli: Cli, tmp_path: Path
) -> None:
    root = tmp_path / f"state {HOSTILE.replace('/', '|')}"
    (root / "environments").mkdir(parents=True)
    (root / "reconciler.yaml").write_text("owner: acme\nproviders: {}\nbogus: 1\n")

    result = cli("validate", "--desired", str(root))

    assert result.code == 1
    output = result.stdout + result.stderr
    for raw in ("\x1b", "\x9b", "\r", "\x07", "\u202e"):
        assert raw not in output, repr(output)
    assert "Traceback" not in output and "\\x1b[2J" in output
    assert "[link=http:||evil.example]click[|link]" in output
