"""What has proven itself: whether a service's serving generation may be promoted to
another environment, and which environments are behind which.

Part of the planner's pure layer: values in, values out (the ledger is read by the
callers). Used by `reconciler promote` (judge) and by `plan` and `status` (lags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.durations import format_duration
from reconciler.model import GenerationRecord, GenerationState, LedgerView


@dataclass(frozen=True)
class Proven:
    """A source service's serving generation, judged fit to promote."""

    env: str
    service: str
    generation: int
    image: str  # the concrete id the cloud launched, never a name that can move
    commit: str | None
    soaked: float  # seconds active and healthy
    approved_unsoaked: str | None = None  # the operator's reason when soaked < min_soak


@dataclass(frozen=True)
class SourceFacts:
    """What the ledger and the desired state say about one source service."""

    env: str
    service: str
    generations: Sequence[GenerationRecord]
    running: int  # instances of the active generation the ledger has running
    replaced_at: datetime | None  # the active generation's last instance replacement
    pinned_to: int | None  # rollback pin
    frozen: str | None  # why, when a guard or `frozen: true` holds it
    fingerprint: str | None = None  # the spec the desired state asks the source for


def judge(
    facts: SourceFacts, *, now: datetime, min_soak: float, approve_unsoaked: str | None
) -> Proven | str:
    """The generation to promote, or why there is none (one sentence)."""
    where = f"{facts.env}/{facts.service}"
    if not facts.generations:
        return f"{where} has no generation in this ledger (is it the daemon's state directory?)"
    latest = max(facts.generations, key=lambda g: g.number)
    active = next((g for g in facts.generations if g.state is GenerationState.ACTIVE), None)
    if active is None:
        return f"{where} has no active generation"
    # A failed generation of the spec still asked for: the source did not prove the
    # image it was given (once the desired state moved back, the failure is history).
    if latest.number > active.number and latest.failed and latest.fingerprint in (
        facts.fingerprint, None
    ):
        return (
            f"{where} generation {latest.number} ({latest.image}) failed "
            f"({latest.reason or 'no reason recorded'}); it still serves generation "
            f"{active.number}: promote after a generation of the new image is active"
        )
    if latest.number > active.number and latest.state in (
        GenerationState.CREATING, GenerationState.READY
    ):
        return (
            f"{where} is rolling out generation {latest.number} ({latest.state.value}); "
            "promote once it is active"
        )
    if facts.pinned_to is not None:
        return (
            f"{where} is pinned to generation {facts.pinned_to} by rollback: what serves is "
            f"not what git says; `reconciler release {facts.env} {facts.service}` first"
        )
    if facts.frozen is not None:
        return f"{where} is frozen ({facts.frozen})"
    if facts.running < active.count:
        return (
            f"{where} generation {active.number} has {facts.running} of {active.count} "
            "instances running: not healthy"
        )
    if not active.image_id:
        return f"{where} generation {active.number} has no image id recorded from its launch"
    became_active = active.state_since or active.activated_at
    if became_active is None:
        return f"{where} generation {active.number} has no activation time recorded"
    # Healthy since it took the traffic, or since an instance of it had to be replaced.
    since = max(t for t in (became_active, facts.replaced_at) if t is not None)
    soaked = max(0.0, (now - since).total_seconds())
    if soaked < min_soak and approve_unsoaked is None:
        replaced = (
            f", since its last instance replacement at {since.isoformat(timespec='seconds')}"
            if facts.replaced_at is not None and since == facts.replaced_at else ""
        )  # fmt: skip
        return (
            f"{where} generation {active.number} has soaked {format_duration(soaked)} of the "
            f"{format_duration(min_soak)} asked{replaced}; wait, or --approve-unsoaked REASON"
        )
    return Proven(
        env=facts.env, service=facts.service, generation=active.number, image=active.image_id,
        commit=None, soaked=soaked,
        approved_unsoaked=approve_unsoaked if soaked < min_soak else None,
    )  # fmt: skip


@dataclass(frozen=True)
class Lag:
    """`env/service` serves an image `ahead` replaced `generations` activations ago."""

    env: str
    service: str
    ahead: str  # the environment it is behind
    generations: int
    image: str  # what `ahead` serves
    soaked: float  # seconds `ahead` has served it

    def describe(self) -> str:
        plural = "" if self.generations == 1 else "s"
        return (
            f"{self.env}/{self.service} is {self.generations} generation{plural} behind "
            f"{self.ahead} ({self.image}, soaked {format_duration(self.soaked)})"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "env": self.env, "service": self.service, "behind": self.ahead,
            "generations": self.generations, "image": self.image,
            "soaked_seconds": round(self.soaked),
        }  # fmt: skip


def lags(view: LedgerView, *, now: datetime) -> list[Lag]:
    """For each service name in several environments: env B is N generations behind
    env A when B serves an image A served before and A activated N generations since."""
    by_service: dict[str, dict[str, list[GenerationRecord]]] = {}
    for gen in view.generations:
        by_service.setdefault(gen.service, {}).setdefault(gen.env, []).append(gen)
    found: list[Lag] = []
    for service, envs in sorted(by_service.items()):
        serving = {env: _active(gens) for env, gens in envs.items()}
        for behind_env, behind in sorted(serving.items()):
            for ahead_env, ahead in sorted(serving.items()):
                if behind is None or ahead is None or behind_env == ahead_env:
                    continue
                if _image(behind) == _image(ahead):
                    continue
                lag = _activations_since(envs[ahead_env], _image(behind), ahead)
                if lag:
                    since = ahead.state_since or ahead.activated_at or now
                    found.append(
                        Lag(behind_env, service, ahead_env, lag, _image(ahead),
                            max(0.0, (now - since).total_seconds()))
                    )  # fmt: skip
    return found


def _active(gens: Sequence[GenerationRecord]) -> GenerationRecord | None:
    return next((g for g in gens if g.state is GenerationState.ACTIVE), None)


def _image(gen: GenerationRecord) -> str:
    return gen.image_id or gen.image


def _activations_since(
    gens: Sequence[GenerationRecord], image: str, active: GenerationRecord
) -> int:
    """How many generations took the traffic after the newest one that served `image`
    (0 when none served it: the environments are not on one path)."""
    served = [g for g in gens if _image(g) == image and g.activated_at is not None]
    if not served:
        return 0
    last = max(served, key=lambda g: g.number)
    return sum(
        1 for g in gens
        if last.number < g.number <= active.number and g.activated_at is not None
    )  # fmt: skip

