"""The guards of DESIGN §4: the reasons a whole pass is refused, decided from values.

Owns: refusing an empty desired state or environment (`static_refusals`, also what
`validate` says), a plan that destroys too much (`check_guards`), and the thrash
detector's verdict (`thrashing`). Must not: read the ledger or the clock (the engine
passes in what they say), or act on a verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model import (
    CAPACITY_REDUCING,
    ActionKind,
    DesiredState,
    ObservedInstance,
    ObservedVolume,
    Plan,
    Reason,
)

ServiceKey = tuple[str, str]


def static_refusals(desired: DesiredState) -> list[str]:
    """The guards that need only the desired state: `validate` gives the same verdict
    as `plan` and `apply` (an empty desired state or environment is refused by all)."""
    reasons: list[str] = []
    if not desired.environments:
        reasons.append("the desired state declares no environments; refusing to act on it")
    for env in desired.environments:
        if not env.services:
            reasons.append(
                f"environment {env.name} ({env.source_file}) declares no services; "
                "refusing to prune it (delete the file to decommission the environment)"
            )
    return reasons


def check_guards(
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    plan: Plan,
    *,
    allow_mass_destroy: bool,
    volumes: Sequence[ObservedVolume] = (),
) -> list[str]:
    """DESIGN §4 guards; each returned string is a reason to refuse the whole run."""
    reasons = static_refusals(desired) + volume_changes(desired, volumes)
    alive = [i for i in observed if i.alive]
    # What serves now and would not after: a stopped instance (a volume service's
    # standby) serves nothing, so its destroy takes no capacity away.
    serving = {i.id for i in alive}
    reducing = [
        a for a in plan.actions
        if a.kind is ActionKind.DESTROY and a.reason in CAPACITY_REDUCING
        and a.instance_id in serving
    ]  # fmt: skip
    limit = desired.policy.max_destroy_fraction
    if reducing and not allow_mass_destroy and len(reducing) > limit * len(alive):
        reasons.append(
            f"plan destroys {len(reducing)} of {len(alive)} running instances without "
            f"replacement, above max_destroy_fraction {limit}; "
            "re-run with --allow-mass-destroy if this is intended"
        )
    return reasons


def volume_changes(desired: DesiredState, volumes: Sequence[ObservedVolume]) -> list[str]:
    """A volume is never replaced on drift: a new size or type for an existing one is
    refused, naming the file and key (growing one in place is not supported yet)."""
    reasons: list[str] = []
    for spec in desired.services():
        wanted = spec.volume
        have = next((v for v in volumes if (v.env, v.service) == (spec.env, spec.name)), None)
        if wanted is None or have is None:
            continue
        where = f"{spec.source_file}: services.{spec.name}.volume"
        if have.size != wanted.size:
            reasons.append(
                f"{where}.size: {spec.env}/{spec.name}'s volume {have.id} has {have.size} GiB, "
                f"the desired state asks for {wanted.size}; a volume is never replaced and "
                "growing one in place is not supported yet: put the size back"
            )
        if wanted.type is not None and have.type is not None and have.type != wanted.type:
            reasons.append(
                f"{where}.type: {spec.env}/{spec.name}'s volume {have.id} is {have.type}, the "
                f"desired state asks for {wanted.type}; a volume is never replaced: put it back"
            )
    return reasons


def replacements_planned(plan: Plan) -> dict[ServiceKey, int]:
    """Per service, the instances this plan replaces because they went missing or were
    tampered with: what the thrash detector counts."""
    planned: dict[ServiceKey, int] = {}
    for action in plan.actions:
        if action.kind is ActionKind.CREATE and action.reason in (Reason.MISSING, Reason.TAMPERED):
            key = (action.env, action.service)
            planned[key] = planned.get(key, 0) + 1
    return planned


def thrashing(
    desired: DesiredState, planned: Mapping[ServiceKey, int], recent: Mapping[ServiceKey, int]
) -> dict[ServiceKey, dict[str, Any]]:
    """Services whose replacements in the policy window (`recent`), with this plan's
    (`planned`), exceed `thrash_limit`: something keeps killing them; stop feeding it."""
    policy = desired.policy
    tripped: dict[ServiceKey, dict[str, Any]] = {}
    for key, count in planned.items():
        done = recent.get(key, 0)
        if done + count > policy.thrash_limit:
            tripped[key] = {
                "why": f"thrash: {done} replacements in {policy.thrash_window:.0f}s "
                f"and {count} more planned, limit {policy.thrash_limit}",
                "replacements": done,
                "planned": count,
                "limit": policy.thrash_limit,
                "window_seconds": policy.thrash_window,
                "commit": desired.commit,
            }
    return tripped
