"""API-call and ledger-write budgets of a pass, counted exactly (no timing).

A no-op pass over 50 services x 2 instances lists once and writes only its run row
and the per-provider observation snapshot; a create pass waits for all its services'
boots with shared listings, far fewer than one per service.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer, fetch_stats
from tests.support.desired_builder import IMAGE_V1, write_desired

SERVICES, COUNT = 50, 2
# Rows a no-op pass may add: its run, and one observation snapshot per provider.
PER_PASS_TABLES = {"runs": 1, "snapshots": 1}
# Rows a pass may rewrite in place: each provider's billing settings, stamped per pass.
PER_PASS_UPSERTS = {"provider_billing"}


def _fleet(root: Path, endpoint: str) -> Path:
    services = {f"svc{n:02d}": {"image": IMAGE_V1, "count": COUNT} for n in range(SERVICES)}
    return write_desired(
        root, endpoint=endpoint, environments={"production": services}, policy={"max_parallel": 8}
    )


def _received(endpoint: str) -> dict[str, int]:
    return dict(fetch_stats(endpoint)["received"])


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def _ledger_contents(path: Path) -> dict[str, Any]:
    """Every table's rows, read through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        conn.close()


def test_a_no_op_pass_lists_once_and_writes_only_its_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = _fleet(tmp_path / "desired", sandbox.endpoint)
    with Ledger.open(tmp_path / "state") as ledger:
        first = engine.apply_pass(root, ledger)
        assert first.result is not None and first.result.counts.get("create") == SERVICES * COUNT
        before_calls = _received(sandbox.endpoint)
        before_rows = _ledger_contents(ledger.path)
        outcome = engine.apply_pass(root, ledger)
        calls = _delta(before_calls, _received(sandbox.endpoint))
        after_rows = _ledger_contents(ledger.path)
    assert outcome.plan.empty
    assert calls == {"DescribeInstances": 1}, calls
    assert sum(calls.values()) <= 3
    for table, rows in after_rows.items():
        added = len(rows) - len(before_rows.get(table, []))
        assert added == PER_PASS_TABLES.get(table, 0), (table, added)
        if table not in PER_PASS_TABLES and table not in PER_PASS_UPSERTS:
            assert rows == before_rows[table], f"a no-op pass changed rows of {table}"


def test_a_create_pass_shares_boot_wait_listings(tmp_path: Path, sandbox: SandboxServer) -> None:
    root = _fleet(tmp_path / "desired", sandbox.endpoint)
    before = _received(sandbox.endpoint)
    with Ledger.open(tmp_path / "state") as ledger:
        outcome = engine.apply_pass(root, ledger)
    calls = _delta(before, _received(sandbox.endpoint))
    assert outcome.result is not None and outcome.result.ok
    assert calls["RunInstances"] == SERVICES * COUNT
    # One observation listing plus the boot waits; one listing per waiting service
    # would be 50 more. Shared listings (at most one per poll interval) stay well under.
    assert calls["DescribeInstances"] < SERVICES // 2, calls
    assert set(calls) == {"DescribeInstances", "RunInstances"}, calls
