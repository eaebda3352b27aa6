"""The planner's cases as data: each tests/planning/plan_cases/*.yaml states desired + ledger +
observed at a fixed `now` and the exact, ordered actions the plan must hold.

One generic runner; a new case is a new file. Each case is also applied through the
simulated applier and planned again, which must then yield no actions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.planning.planner import compute_plan
from tests.support.planner_support import World, build_case, compact_action, simulate_apply

CASES = sorted((Path(__file__).parent / "plan_cases").glob("*.yaml"))
REQUIRED = {"description", "now", "desired", "expected"}
ALLOWED = REQUIRED | {"ledger", "observed", "expected_notes"}


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    assert isinstance(case, dict), f"{path.name}: a case is a mapping"
    assert case.keys() >= REQUIRED, f"{path.name}: missing {sorted(REQUIRED - case.keys())}"
    assert case.keys() <= ALLOWED, f"{path.name}: unknown keys {sorted(case.keys() - ALLOWED)}"
    return case


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_case(path: Path) -> None:
    case = load_case(path)
    inputs = build_case(case)

    plan = compute_plan(
        desired=inputs.desired, observed=inputs.observed, ledger=inputs.ledger, now=inputs.now
    )

    actual = [compact_action(a) for a in plan.actions]
    assert actual == case["expected"], f"{path.name}: {case['description']}"
    expected_notes = case.get("expected_notes") or []
    assert len(plan.notes) == len(expected_notes), plan.notes
    for note, want in zip(plan.notes, expected_notes, strict=True):
        assert (note.env, note.service) == (want["env"], want["service"])
        assert want["contains"] in note.message


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_case_converges(path: Path) -> None:
    """Applying the case's plan and planning again yields nothing (notes allowed)."""
    inputs = build_case(load_case(path))
    world = World(
        observed=inputs.observed,
        generations=inputs.ledger.generations,
        instances=inputs.ledger.instances,
    )
    plan = compute_plan(
        desired=inputs.desired,
        observed=world.observed,
        ledger=world.ledger_view(),
        now=inputs.now,
    )
    after = simulate_apply(plan, world, desired=inputs.desired, now=inputs.now)
    again = compute_plan(
        desired=inputs.desired,
        observed=after.observed,
        ledger=after.ledger_view(),
        now=inputs.now,
    )
    # A generation waiting ready is only health-checked: not a change.
    assert [a.describe() for a in again.changes()] == []
