"""The pure judgement of `reconciler promote` (reconciler.planning.promotion.judge) and
its target checks: each refusal says why, and only a generation that serves, whole,
for the soak time passes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.model import (
    DesiredState,
    Environment,
    GenerationRecord,
    GenerationState,
    ProviderProfile,
)
from reconciler.planning.promotion import Proven, SourceFacts, judge
from reconciler.promotion.promote import _target_problems
from tests.support.planner_support import make_service

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def gen(
    number: int, state: GenerationState, *, since: float = 7200, **extra: object
) -> GenerationRecord:
    began = NOW - timedelta(seconds=since)
    fields = {"fingerprint": f"fp{number}", "image": f"ami-{number}", "size": "t3.micro",
              "count": 2, "image_id": f"ami-{number}", "state_since": began,
              "activated_at": began, **extra}  # fmt: skip
    return GenerationRecord("staging", "web", number, state=state, **fields)  # type: ignore[arg-type]


def facts(*gens: GenerationRecord, running: int = 2, **extra: object) -> SourceFacts:
    defaults = {"replaced_at": None, "pinned_to": None, "frozen": None, "fingerprint": "fp2"}
    return SourceFacts("staging", "web", gens, running=running, **{**defaults, **extra})  # type: ignore[arg-type]


def test_a_whole_generation_soaked_long_enough_is_proven() -> None:
    verdict = judge(facts(gen(2, GenerationState.ACTIVE)), now=NOW, min_soak=3600,
                    approve_unsoaked=None)  # fmt: skip
    assert isinstance(verdict, Proven) and verdict.image == "ami-2" and verdict.soaked == 7200


@pytest.mark.parametrize(("source", "why"), [
    (facts(gen(2, GenerationState.ACTIVE), running=1), "has 1 of 2 instances running"),
    (facts(gen(2, GenerationState.ACTIVE), frozen="by a guard"), "is frozen (by a guard)"),
    (facts(gen(2, GenerationState.ACTIVE), pinned_to=1), "pinned to generation 1"),
    (facts(gen(2, GenerationState.ACTIVE), gen(3, GenerationState.READY)),
     "is rolling out generation 3 (ready)"),
    (facts(gen(2, GenerationState.ACTIVE),
           gen(3, GenerationState.FAILED, reason="failed: health gate"), fingerprint="fp3"),
     "generation 3 (ami-3) failed"),
    (facts(gen(2, GenerationState.ACTIVE, since=600)), "has soaked 10m of the 1h asked"),
    (facts(gen(2, GenerationState.ACTIVE),
           replaced_at=NOW - timedelta(seconds=60)), "since its last instance replacement"),
])  # fmt: skip
def test_each_refusal_says_why(source: SourceFacts, why: str) -> None:
    verdict = judge(source, now=NOW, min_soak=3600, approve_unsoaked=None)
    assert isinstance(verdict, str) and why in verdict, verdict


def test_a_failure_the_desired_state_moved_away_from_is_history() -> None:
    failed = gen(3, GenerationState.FAILED, reason="failed: x")
    source = facts(gen(2, GenerationState.ACTIVE), failed, fingerprint="fp2")
    assert isinstance(judge(source, now=NOW, min_soak=0, approve_unsoaked=None), Proven)


def test_an_override_is_kept_with_the_proof_only_when_it_was_needed() -> None:
    young = facts(gen(2, GenerationState.ACTIVE, since=60))
    verdict = judge(young, now=NOW, min_soak=3600, approve_unsoaked="INC-1")
    assert isinstance(verdict, Proven) and verdict.approved_unsoaked == "INC-1"
    old = judge(facts(gen(2, GenerationState.ACTIVE)), now=NOW, min_soak=3600,
                approve_unsoaked="INC-1")  # fmt: skip
    assert isinstance(old, Proven) and old.approved_unsoaked is None


def test_an_image_id_is_not_promoted_to_another_region() -> None:
    source = make_service("staging", "web", image="ami-1")
    target = replace(make_service("production", "web", image="ami-0"), provider="west")
    east = ProviderProfile(name="cloud", driver="ec2", region="us-east-1")
    west = ProviderProfile(name="west", driver="ec2", region="eu-west-1")
    desired = DesiredState(
        root="/d", owner="acme", providers={"cloud": east, "west": west},
        environments=(Environment("staging", "cloud", (source,)),
                      Environment("production", "west", (target,))),
    )  # fmt: skip
    [why] = _target_problems(desired, source, target, {})
    assert "eu-west-1" in why and "us-east-1" in why and "set-image" in why
    assert _target_problems(desired, source, replace(target, provider="cloud"), {}) == []
