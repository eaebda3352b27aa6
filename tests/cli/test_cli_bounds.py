"""Every CLI option has a range and every --json document is valid JSON: out-of-range
values are usage errors with a clear message (never a traceback), and a non-finite
number is written as null (JSON has no Infinity)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.ledger import Ledger
from tests.conftest import Cli


def _strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_cost_beyond_floats_is_null_in_json_not_infinity(cli: Cli, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state") as ledger:
        ledger.record_instance(
            id="i-absurd", provider="cloud", env="prod", service="web", generation=1, slot=1,
            name=None, image="ami", size="t3.micro", price_per_hour=1e308, state="running",
            created_at=datetime.now(UTC) - timedelta(days=3), op=None,
        )  # fmt: skip

    for args in (("ledger", "cost", "--json"), ("ledger", "cost", "--by", "day", "--json"),
                 ("ledger", "history", "--json"), ("status", "--json")):  # fmt: skip
        result = cli(*args)
        assert result.code == 0, (args, result.stderr)
        _strict(result.stdout)
    rows = _strict(cli("ledger", "cost", "--json").stdout)["rows"]
    assert rows[0]["cost"] is None


@pytest.mark.parametrize(
    "args",
    [
        ("daemon", "--repo", "/nonexistent", "--interval", "0s"),
        ("daemon", "--repo", "/nonexistent", "--interval", "400d"),
        ("daemon", "--repo", "/nonexistent", "--fetch-timeout", "0s"),
        ("daemon", "--repo", "/nonexistent", "--fetch-timeout", "999999999d"),
        ("ledger", "history", "--limit", "99999999999999999999"),
        ("ledger", "history", "--limit", "10", "--page", "99999999999999999999"),
        ("ledger", "history", "--page", "0"),
        ("ledger", "events", "--limit", "-1"),
        ("ledger", "cost", "--since", "999999999d"),
        ("sandbox", "--port", "70000"),
        ("sandbox", "--port", "0"),
    ],
)
def test_an_option_out_of_range_is_a_usage_error(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args, timeout=60)
    assert result.code != 0
    assert "Traceback" not in result.stderr
    assert "Invalid value" in result.stderr or "Error" in result.stderr, result.stderr
