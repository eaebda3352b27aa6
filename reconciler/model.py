"""Value objects shared by every layer: desired state, observations, ledger view, plans.

Owns: frozen dataclasses and enums, and nothing that performs I/O. Must not: import
any adapter, the ledger, or a third-party library; every other module may import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

# ---------------------------------------------------------------- desired state


class Strategy(StrEnum):
    BLUE_GREEN = "blue-green"
    RECREATE = "recreate"
    ROLLING = "rolling"


@dataclass(frozen=True)
class SecretRef:
    """Where a credential lives; the value itself is never held in the model."""

    source: str  # "env" or "file"
    name: str  # environment variable name, or file path

    def __repr__(self) -> str:
        return f"SecretRef({self.source}:{self.name})"


@dataclass(frozen=True)
class ProviderProfile:
    name: str
    driver: str  # a libcloud compute provider name ("ec2") or "sandbox"
    region: str | None = None
    endpoint: str | None = None
    credentials: Mapping[str, SecretRef] = field(default_factory=dict)
    # How the provider bills an instance's lifetime (see reconciler.planning.costs):
    # "per-second" with a minimum (EC2 Linux: 60 s) or "per-hour" rounded up.
    billing: str = "per-second"
    billing_minimum: float = 60.0  # seconds
    timeout: float = 30.0  # seconds a single API request may take
    # The driver's own settings (GCE project, Azure resource group, OpenStack auth URL...),
    # plain values only; reconciler.providers.drivers lists which driver takes which.
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthSpec:
    """The health gate's settings; `apply.gates` probes with the health-check plugins."""

    kind: str  # "http", "tcp" or "command"
    target: str
    timeout: float = 300.0
    interval: float = 5.0
    healthy_after: int = 1
    warmup: float = 0.0


@dataclass(frozen=True)
class TrafficSpec:
    """How traffic moves to a new generation: a plugin name and its one setting, and
    when (`switch:`): as soon as it is healthy, on `reconciler switch`, or after a delay."""

    kind: str  # "command" or "libcloud-lb" (or a third-party plugin's name)
    target: str  # the command line, or the load balancer's name
    manual: bool = False  # `switch: manual`: only `reconciler switch` moves it
    switch_after: float | None = None  # `switch: after 30m`: seconds after it is ready

    @property
    def waits(self) -> bool:
        """Whether a healthy new generation waits `ready` instead of taking the traffic."""
        return self.manual or self.switch_after is not None

    def describe_switch(self) -> str:
        if self.manual:
            return "manual"
        if self.switch_after is not None:
            return f"after {self.switch_after:g}s"
        return "at once"


@dataclass(frozen=True)
class VolumeSpec:
    """A data volume that outlives the service's instances and is handed from one
    generation to the next (the service is a singleton: count 1, strategy recreate)."""

    size: int  # GiB
    device: str  # where the instance sees it, e.g. /dev/sdf
    type: str | None = None  # the cloud's volume type (EC2: gp3, io2, ...); None: its default
    snapshot_before_handover: bool = True


@dataclass(frozen=True)
class NotifierSpec:
    kind: str  # "webhook" or "command" (or a third-party plugin's name)
    target: str  # URL or command line
    secret: SecretRef | None = None  # webhook HMAC key
    events: tuple[str, ...] = ()  # empty: every event
    timeout: float = 10.0  # seconds one delivery may take, all attempts included


@dataclass(frozen=True)
class ServiceSpec:
    env: str
    name: str
    provider: str
    image: str
    size: str
    count: int
    strategy: Strategy
    keep_previous: float  # seconds
    fingerprint: str
    user_data_path: str | None = None
    user_data: str | None = field(default=None, repr=False)  # rendered contents; never logged
    health: HealthSpec | None = None
    price_per_hour: float | None = None
    source_file: str = ""
    traffic: TrafficSpec | None = None
    batch: int = 1  # rolling: instances replaced at a time
    frozen: bool = False  # observed and reported, never changed
    volume: VolumeSpec | None = None  # not in the fingerprint: it is never replaced

    @property
    def key(self) -> tuple[str, str]:
        return (self.env, self.name)


@dataclass(frozen=True)
class Environment:
    name: str
    provider: str
    services: tuple[ServiceSpec, ...]
    source_file: str = ""
    frozen: bool = False


@dataclass(frozen=True)
class Policy:
    max_parallel: int = 8
    max_destroy_fraction: float = 0.5
    boot_timeout: float = 600.0  # seconds to wait for a new instance to run
    # Thrash detector: more than `thrash_limit` instance replacements of one service
    # within `thrash_window` seconds freezes it until a new commit or `unfreeze`.
    thrash_limit: int = 5
    thrash_window: float = 3600.0
    # All services' counts together: a typo in one count cannot launch a fleet.
    max_total_instances: int = 1000


@dataclass(frozen=True)
class DesiredState:
    root: str
    owner: str
    providers: Mapping[str, ProviderProfile]
    environments: tuple[Environment, ...]
    policy: Policy = Policy()
    commit: str | None = None
    notifiers: tuple[NotifierSpec, ...] = ()

    def services(self) -> tuple[ServiceSpec, ...]:
        return tuple(s for env in self.environments for s in env.services)

    @cached_property
    def _by_key(self) -> dict[tuple[str, str], ServiceSpec]:
        # Built once: the planner and applier look services up per instance and action.
        return {(s.env, s.name): s for s in self.services()}

    def service(self, env: str, name: str) -> ServiceSpec | None:
        return self._by_key.get((env, name))


# ---------------------------------------------------------------- observation


# Environment and service names: in the desired state, and in identity tags read back.
IDENTITY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
# Generation numbers as tags hold them: plain positive decimal, never more than 9 digits
# (a 20-digit tag would overflow SQLite's integers; `-1` or `03` is no generation of ours).
GENERATION_TAG = re.compile(r"[1-9][0-9]{0,8}")


class InstanceState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"  # stopping or stopped: exists, bills storage, serves nothing
    GONE = "gone"  # shutting-down or terminated


ALIVE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})


@dataclass(frozen=True)
class ObservedInstance:
    id: str
    provider: str
    state: InstanceState
    image: str
    size: str
    env: str | None = None
    service: str | None = None
    generation: int | None = None
    slot: int | None = None
    fingerprint: str | None = None
    op: str | None = None
    name: str | None = None
    private_ip: str | None = None
    public_ip: str | None = None
    launched_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # The cloud's own word for a state its adapter does not know (then `state` is
    # STOPPED: not counted as serving); reported as an event by the engine.
    unrecognized_state: str | None = None
    # Why its identity tags (env, service, generation) cannot be read, when they
    # cannot: such an instance is reported and left alone, never adopted or destroyed.
    unreadable: str | None = None
    zone: str | None = None  # availability zone, where the cloud has them

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES


@dataclass(frozen=True)
class ObservedVolume:
    """A data volume with our owner tag, as the cloud lists it."""

    id: str
    provider: str
    state: str  # the cloud's word: creating, available, in-use, deleting, ...
    size: int  # GiB
    zone: str
    type: str | None = None
    attached_to: str | None = None  # the instance it is attached to (attaching or attached)
    attachment: str | None = None  # attaching, attached, detaching
    device: str | None = None
    env: str | None = None
    service: str | None = None
    op: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- ledger view


class GenerationState(StrEnum):
    CREATING = "creating"
    ACTIVE = "active"
    # Healthy beside the serving generation, waiting for its traffic (`switch: manual`
    # or `after D`) until `reconciler switch`, the delay, or `reconciler abort`.
    READY = "ready"
    STANDBY = "standby"
    FAILED = "failed"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class GenerationRecord:
    env: str
    service: str
    number: int
    fingerprint: str
    image: str
    size: str
    count: int
    state: GenerationState
    created_at: datetime | None = None
    activated_at: datetime | None = None
    retired_at: datetime | None = None
    image_id: str | None = None  # what the cloud reported at launch
    reason: str | None = None  # why it ended (failed generations: starts with "failed")
    state_since: datetime | None = None  # when its current state began
    retried: bool = False  # `reconciler retry` allowed its failed spec again

    @property
    def failed(self) -> bool:
        """Whether this generation failed (its state may have moved on to destroyed)."""
        return generation_failed(self.state, self.reason)


def generation_failed(state: str, reason: str | None) -> bool:
    """The one rule for a failed generation: state `failed`, or a reason saying it
    failed once its instances are gone (ledger/costsql.py states it again in SQL)."""
    return state == GenerationState.FAILED.value or (reason or "").startswith("failed")


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    provider: str
    env: str
    service: str
    generation: int
    slot: int | None
    state: str  # "pending", "running", "destroyed", "gone"
    created_at: datetime | None = None


@dataclass(frozen=True)
class Pin:
    """A service held on a generation by `rollback` until `release` or a spec change."""

    env: str
    service: str
    generation: int
    fingerprint: str  # the desired spec's fingerprint when the pin was set
    since: datetime | None = None


@dataclass(frozen=True)
class Freeze:
    """A service a guard froze: observed and reported, never changed, until lifted."""

    why: str
    since: datetime | None = None


@dataclass(frozen=True)
class LedgerView:
    """What the planner needs to know from the ledger: generations and live instances."""

    generations: tuple[GenerationRecord, ...] = ()
    instances: tuple[InstanceRecord, ...] = ()  # only those not yet destroyed

    def generations_of(self, env: str, service: str) -> list[GenerationRecord]:
        return [g for g in self.generations if (g.env, g.service) == (env, service)]


# ---------------------------------------------------------------- plan


class ActionKind(StrEnum):
    CREATE = "create"
    DESTROY = "destroy"
    ACTIVATE = "activate"
    ADOPT = "adopt"  # record a generation the cloud has and the ledger lacks
    RETIRE = "retire"  # mark a generation destroyed once it has no instances
    # `switch: manual | after D`: health-gate a new generation and leave it `ready`
    # beside the serving one, the traffic unmoved.
    PREPARE = "prepare"
    # Health-check a generation waiting `ready`: changes nothing unless it fails (then
    # it is failed and destroyed, never switched). Not a change for `plan`.
    CHECK = "check"
    # `volume:`: bring the service's data volume to the generation's instance (created
    # there when it has none): snapshot when asked, stop the instance holding it,
    # detach, attach. Each step is planned again from what the cloud shows.
    HANDOVER = "handover"


class Reason(StrEnum):
    SPEC_CHANGED = "spec-changed"
    MISSING = "missing"
    TAMPERED = "tampered"
    SURPLUS = "surplus"
    DEFICIT = "deficit"
    UNOWNED_GENERATION = "unowned-generation"
    STANDBY_EXPIRED = "standby-expired"
    # Beyond DESIGN §4's list: cleanup of a failed generation's leftovers, and
    # recording a generation the cloud has but the ledger lost.
    FAILED_GENERATION = "failed-generation"
    UNRECORDED_GENERATION = "unrecorded-generation"
    # A whole environment file deleted, or one service removed from its file: said as
    # such, not as instances of nothing desired.
    ENVIRONMENT_REMOVED = "environment-removed"
    SERVICE_REMOVED = "service-removed"
    # A generation waiting `ready` for its switch: kept health-checked each pass, or
    # dropped when a newer commit supersedes it before it ever took traffic.
    AWAITING_SWITCH = "awaiting-switch"
    SUPERSEDED = "superseded"


# Destroys that take away serving capacity without a same-plan replacement:
# these are what the mass-destroy guard counts.
CAPACITY_REDUCING = frozenset(
    {Reason.SURPLUS, Reason.UNOWNED_GENERATION, Reason.ENVIRONMENT_REMOVED, Reason.SERVICE_REMOVED}
)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: Reason
    env: str
    service: str
    generation: int
    provider: str
    slot: int | None = None
    instance_id: str | None = None
    replaces: str | None = None  # the instance a create stands in for
    previous: int | None = None  # for activate: the generation it supersedes
    adopt_as: GenerationState | None = None  # for adopt: the state to record
    detail: str = ""

    def describe(self) -> str:
        target = f"{self.env}/{self.service} g{self.generation}"
        if self.slot is not None:
            target += f" #{self.slot}"
        if self.instance_id:
            target += f" ({self.instance_id})"
        return f"{self.kind.value} {target} [{self.reason.value}]"


@dataclass(frozen=True)
class Note:
    """Something the planner decided not to do, and why (reported, not acted on)."""

    env: str
    service: str
    message: str


class HoldReason(StrEnum):
    """Why a service's drift is not being acted on (or cannot be): what an operator
    must see in `plan`, `status`, the metrics and the notifiers."""

    PINNED = "pinned"  # `rollback` holds it on a generation until `release`
    FAILED = "failed"  # its spec failed; waits for a new commit or `retry`
    FROZEN = "frozen"  # a guard or `frozen: true` stops every change
    DOWN = "down"  # desired instances, none running, and nothing planned starts one
    WAITING = "waiting"  # a new generation is ready; traffic waits for `switch` or a delay


HOLD_REASONS: tuple[HoldReason, ...] = tuple(HoldReason)


@dataclass(frozen=True)
class Hold:
    env: str
    service: str
    reason: HoldReason
    why: str
    since: datetime | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "env": self.env,
            "service": self.service,
            "reason": self.reason.value,
            "why": self.why,
            "since": self.since.isoformat() if self.since else None,
        }


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    notes: tuple[Note, ...] = ()
    held: tuple[Hold, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to change: health checks of a waiting generation are not changes."""
        return not self.changes()

    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is not ActionKind.CHECK)

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)

    def mutating(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind in (ActionKind.CREATE, ActionKind.DESTROY))

    def by_service(self) -> dict[tuple[str, str], list[Action]]:
        groups: dict[tuple[str, str], list[Action]] = {}
        for action in self.actions:
            groups.setdefault((action.env, action.service), []).append(action)
        return groups
