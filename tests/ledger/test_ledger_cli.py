"""`reconciler ledger cost|orphans|history|events` and the plan's cost, end to end: a real
subprocess, the real libcloud EC2 driver against the sandbox endpoint, a real ledger."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from libcloud.compute.base import NodeImage, NodeSize
from libcloud.pricing import get_size_price

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.model import GenerationState
from reconciler.present import render
from reconciler.providers.sandbox import SandboxServer
from tests.conftest import Cli
from tests.support.cloud import live_nodes, raw_driver
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, git_commit, write_desired


def _json(result: Any) -> Any:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _desired(tmp_path: Path, sandbox: SandboxServer, services: dict[str, Any]) -> Path:
    root = write_desired(
        tmp_path / "desired", endpoint=sandbox.endpoint, environments={"production": services}
    )
    git_commit(root, "desired")
    return root


def _plan_costs(root: Path, state_dir: Path) -> dict[str, Any]:
    with Ledger.open(state_dir) as ledger:
        outcome = engine.plan_pass(root, ledger)
    return render.plan_to_json(
        outcome.plan, commit=outcome.desired.commit, guards=outcome.guards, costs=outcome.costs
    )


# ---------------------------------------------------------------- plan cost


def test_size_change_for_two_instances_costs_15_18_a_month(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    # Explicit prices: libcloud 3.9's data says t3.small is 0.022 in us-east-1, not 0.0208.
    web = {"image": IMAGE_V1, "count": 2, "size": "t3.micro", "price_per_hour": 0.0104}
    root = _desired(tmp_path, sandbox, {"web": web})
    assert cli("apply", "--desired", str(root)).code == 0

    root = _desired(
        tmp_path, sandbox, {"web": {**web, "size": "t3.small", "price_per_hour": 0.0208}}
    )
    document = _plan_costs(root, cli.state_dir)
    assert document["monthly_cost_delta"] == pytest.approx(15.18)
    # Two t3.micro kept 30 minutes (keep_previous) beside their successors.
    assert document["overlap_cost"] == pytest.approx(round(2 * 0.0104 * 0.5, 2))
    per_action = [a["monthly_cost_delta"] for a in document["actions"]]
    assert sum(per_action) == pytest.approx(15.184)
    creates = [a for a in document["actions"] if a["kind"] == "create"]
    assert [a["monthly_cost_delta"] for a in creates] == [pytest.approx(0.0208 * 730)] * 2


def test_plan_cost_uses_libcloud_prices_when_the_desired_state_sets_none(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    web = {"image": IMAGE_V1, "count": 2, "size": "t3.micro"}
    root = _desired(tmp_path, sandbox, {"web": web})
    assert cli("apply", "--desired", str(root)).code == 0
    root = _desired(tmp_path, sandbox, {"web": {**web, "size": "t3.small"}})

    def price(size: str) -> float:
        return float(get_size_price("compute", "ec2_linux", size, "us-east-1"))

    expected = round(2 * (price("t3.small") - price("t3.micro")) * 730, 2)
    assert _plan_costs(root, cli.state_dir)["monthly_cost_delta"] == pytest.approx(expected)


# ---------------------------------------------------------------- cost


def test_cost_total_is_the_sum_of_its_rows_in_every_grouping(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = _desired(
        tmp_path,
        sandbox,
        {
            "web": {"image": IMAGE_V1, "count": 2, "price_per_hour": 0.5},
            "api": {"image": IMAGE_V1, "count": 1, "price_per_hour": 1.25},
        },
    )
    assert cli("apply", "--desired", str(root)).code == 0
    totals = []
    for by in ("env", "service", "generation", "day", "provider"):
        document = _json(cli("ledger", "cost", "--by", by, "--json"))
        assert document["total"] == pytest.approx(sum(r["cost"] for r in document["rows"]))
        totals.append(document["total"])
    # Every grouping shares one total; each instance has billed at least its 60 s minimum.
    assert max(totals) - min(totals) < 0.01
    assert min(totals) >= (2 * 0.5 + 1.25) * 60 / 3600
    service = _json(cli("ledger", "cost", "--by", "service", "--json"))
    assert {(r["env"], r["service"], r["instances"]) for r in service["rows"]} == {
        ("production", "api", 1),
        ("production", "web", 2),
    }
    as_csv = cli("ledger", "cost", "--csv")
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert table[-1]["env"] == "total"
    assert float(table[-1]["cost"]) == pytest.approx(
        sum(float(r["cost"]) for r in table[:-1]), abs=1e-5
    )
    human = cli("ledger", "cost")
    assert human.code == 0 and "total" in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) <= 80


# ---------------------------------------------------------------- orphans


def _plant(endpoint: str, *, name: str, tags: dict[str, str]) -> str:
    driver = raw_driver(endpoint)
    node = driver.create_node(
        name=name,
        image=NodeImage(id=IMAGE_V1, name=IMAGE_V1, driver=driver),
        size=NodeSize(
            id="t3.micro", name="t3.micro", ram=0, disk=0, bandwidth=None, price=0.0, driver=driver
        ),
        ex_metadata={"Name": name, **tags},
    )
    return str(node.id)


def test_orphans_live_report_undeclared_and_unowned_only_when_asked(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = _desired(tmp_path, sandbox, {"web": {"image": IMAGE_V1, "count": 1}})
    assert cli("apply", "--desired", str(root)).code == 0
    planted = _plant(
        sandbox.endpoint,
        name="production-ghost-g1-1",
        tags={
            "reconciler:owner": "acme",
            "reconciler:env": "production",
            "reconciler:service": "ghost",
            "reconciler:generation": "1",
        },
    )
    stranger = _plant(sandbox.endpoint, name="someone-elses", tags={"team": "data"})

    rows = _json(cli("ledger", "orphans", "--live", "--desired", str(root), "--json"))
    assert [(r["kind"], r["instance"], r["service"]) for r in rows] == [
        ("undeclared", planted, "ghost")
    ]
    assert rows[0]["cost"] > 0 and rows[0]["price_per_hour"] == pytest.approx(0.0104)
    assert "apply" in rows[0]["action"]

    with_unowned = _json(
        cli("ledger", "orphans", "--include-unowned", "--desired", str(root), "--json")
    )
    assert {(r["kind"], r["instance"]) for r in with_unowned} == {
        ("undeclared", planted),
        ("unowned", stranger),
    }
    # Reported, never touched: the stranger still runs.
    assert stranger in {n.id for n in live_nodes(sandbox.endpoint)}


def test_orphans_report_a_survivor_of_its_termination_and_an_expired_standby(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    web = {"image": IMAGE_V1, "count": 1, "keep_previous": "1s", "price_per_hour": 0.1}
    root = _desired(tmp_path, sandbox, {"web": web, "api": {"image": IMAGE_V1, "count": 1}})
    assert cli("apply", "--desired", str(root)).code == 0
    with Ledger.open(cli.state_dir) as ledger:
        (api,) = ledger.instance_rows(service="api")
        # The ledger believes it terminated; the cloud never did.
        ledger.set_instance_state(api["id"], state="destroyed", at=ledger._clock())
        (old_web,) = ledger.instance_rows(service="web")
    root = _desired(
        tmp_path,
        sandbox,
        {"web": {**web, "image": IMAGE_V2}, "api": {"image": IMAGE_V1, "count": 1}},
    )
    assert cli("apply", "--desired", str(root)).code == 0
    time.sleep(1.5)  # keep_previous is 1 s: let the standby outlive it

    rows = _json(cli("ledger", "orphans", "--live", "--desired", str(root), "--json"))
    kinds = {r["instance"]: r["kind"] for r in rows}
    assert kinds[api["id"]] == "survived-termination"
    assert kinds[old_web["id"]] == "standby-expired"
    standby = next(r for r in rows if r["instance"] == old_web["id"])
    assert standby["generation"] == 1 and standby["cost"] >= 0.1 * 60 / 3600

    # Without --live: the last pass's stored observation, with its time.
    stored = _json(cli("ledger", "orphans", "--json"))
    assert {r["instance"]: r["kind"] for r in stored}[api["id"]] == "survived-termination"
    human = cli("ledger", "orphans")
    assert "last pass's observation at" in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) <= 80


# ---------------------------------------------------------------- history and events


def test_history_and_events_in_every_format(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = _desired(tmp_path, sandbox, {"web": {"image": IMAGE_V1, "count": 1}})
    assert cli("apply", "--desired", str(root)).code == 0
    root = _desired(tmp_path, sandbox, {"web": {"image": IMAGE_V2, "count": 1}})
    assert cli("apply", "--desired", str(root)).code == 0

    rows = _json(cli("ledger", "history", "--json"))
    assert [(r["number"], r["state"]) for r in rows] == [(1, "standby"), (2, "active")]
    assert all(r["cost"] > 0 and len(r["commit"]) == 40 for r in rows)
    newest = _json(cli("ledger", "history", "--limit", "1", "--json"))
    older = _json(cli("ledger", "history", "--limit", "1", "--page", "2", "--json"))
    assert [r["number"] for r in newest] == [2] and [r["number"] for r in older] == [1]
    table = list(csv.DictReader(io.StringIO(cli("ledger", "history", "--csv").stdout)))
    assert [t["number"] for t in table] == ["1", "2"]
    human = cli("ledger", "history")
    assert human.code == 0 and "production/web" in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) <= 80

    events = _json(cli("ledger", "events", "--service", "web", "--json"))
    assert events and all(e["service"] == "web" for e in events)
    assert _json(cli("ledger", "events", "--since", "2999-01-01", "--json")) == []
    shown = cli("ledger", "events")
    assert shown.code == 0
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80


def test_human_history_shows_a_page_of_services_and_says_how_to_see_the_rest(
    cli: Cli,
) -> None:
    # Written straight into the ledger: 23 services' histories, as a long-lived fleet has.
    with Ledger.open(cli.state_dir) as ledger:
        for n in range(23):
            ledger.record_generation(
                env="production", service=f"svc{n:02d}", number=1, provider="cloud",
                fingerprint="f", image="ami-1", size="t3.micro", count=1, commit=None,
                state=GenerationState.ACTIVE, at=datetime(2026, 11, 1, tzinfo=UTC),
            )  # fmt: skip
    human = cli("ledger", "history")
    assert human.code == 0, human.stderr
    shown = [n for n in range(23) if f"production/svc{n:02d}" in human.stdout]
    assert shown == list(range(20))
    assert "3 more services not shown" in human.stderr
    one = cli("ledger", "history", "--service", "svc22")
    assert "production/svc22" in one.stdout and "not shown" not in one.stderr
    everything = _json(cli("ledger", "history", "--json"))
    assert len(everything) == 23


def test_status_wraps_between_phrases_at_80_columns(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state") as ledger:
        run = ledger.start_run(command="daemon", commit="0123456789abcdef" * 2 + "01234567")
        ledger.finish_run(
            run,
            result="changes",
            counts={"create": 12, "destroy": 3, "adopt": 1, "retire": 2, "scale": 4,
                    "activate": 2, "replace": 5},
        )  # fmt: skip
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"), "status"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    # Every phrase stays whole on one line: the wrap falls between them.
    for phrase in ("commit 0123456789", "12 create", "3 destroy", "5 replace", "1 adopt"):
        assert any(phrase in line for line in lines), (phrase, lines)
