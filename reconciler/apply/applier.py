"""Apply: execute a Plan against the providers, recording intent and outcome in the ledger.

Owns: the `Applier` and `apply_plan`: bounded parallelism across services, the order
inside a service (create batches, then each other action in plan order), counting,
stop requests, and starting a rolling rollback when a service fails. Its parts do
the work: `launching` (create batches), `teardown` (destroys), `activation`
(activate, and compensation when a rollout fails: the new instances go, the
generation is marked failed, the old one keeps serving), `bookkeeping` (ledger-only
actions); `run` holds what they share. Must not: decide what to do (the planner
does) or retry API calls (the adapters do, at the edge).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from reconciler.apply.activation import Activator
from reconciler.apply.bookkeeping import Bookkeeper
from reconciler.apply.gates import TrafficPort
from reconciler.apply.handover import VolumeMover
from reconciler.apply.launching import Launcher
from reconciler.apply.parallel import LaunchSlots
from reconciler.apply.progress import NoProgress, ProgressHook, progress_for
from reconciler.apply.rolling import roll_back_batches
from reconciler.apply.run import (
    ApplyResult,
    ApplyRun,
    HealthGate,
    RunningGate,
    never_stop,
    no_heartbeat,
)
from reconciler.apply.teardown import Teardown
from reconciler.errors import Interrupted, ReconcilerError, RolloutFailed
from reconciler.extensions.notify import Notifications, Silent
from reconciler.ledger import Ledger
from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    ObservedInstance,
    ObservedVolume,
    Plan,
)
from reconciler.providers import ComputeProvider

__all__ = [
    "Applier",
    "ApplyResult",
    "HealthGate",
    "Interrupted",
    "RolloutFailed",
    "RunningGate",
    "apply_plan",
    "utcnow",
]

log = structlog.get_logger(__name__)

# Generations whose instances take traffic only when activated (or never, while they
# wait `ready`): their creates are not switched in one by one.
GROUPS_PER_SLOT = 4  # services worked on at once per slot of `max_parallel`
MAX_GROUPS_IN_FLIGHT = 64  # threads, whatever max_parallel says
GATED_KINDS = frozenset(
    {ActionKind.ACTIVATE, ActionKind.PREPARE, ActionKind.CHECK, ActionKind.HANDOVER}
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Applier:
    desired: DesiredState
    observed: Sequence[ObservedInstance]
    providers: Mapping[str, ComputeProvider]
    ledger: Ledger
    run_id: int
    gate: HealthGate = field(default_factory=RunningGate)
    now: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    should_stop: Callable[[], bool] = never_stop
    heartbeat: Callable[[], None] = no_heartbeat
    traffic: TrafficPort = field(default_factory=TrafficPort)
    notifications: Notifications = field(default_factory=Silent)
    result: ApplyResult = field(default_factory=ApplyResult)
    progress: ProgressHook = field(default_factory=NoProgress)
    volumes: Sequence[ObservedVolume] = ()
    # The parts, built once from the fields above and sharing one ApplyRun.
    _run: ApplyRun = field(init=False, repr=False)
    _teardown: Teardown = field(init=False, repr=False)
    _activation: Activator = field(init=False, repr=False)
    _launcher: Launcher = field(init=False, repr=False)
    _bookkeeping: Bookkeeper = field(init=False, repr=False)
    _mover: VolumeMover = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._run = ApplyRun(
            desired=self.desired, observed=self.observed, providers=self.providers,
            ledger=self.ledger, run_id=self.run_id, now=self.now, should_stop=self.should_stop,
            heartbeat=self.heartbeat, progress=self.progress, result=self.result,
            volumes=self.volumes,
        )  # fmt: skip
        self._teardown = Teardown(run=self._run, traffic=self.traffic)
        self._mover = VolumeMover(run=self._run, sleep=self.sleep)
        self._activation = Activator(
            run=self._run, gate=self.gate, traffic=self.traffic,
            notifications=self.notifications, teardown=self._teardown, mover=self._mover,
        )  # fmt: skip
        self._launcher = Launcher(
            run=self._run, gate=self.gate, traffic=self.traffic,
            activation=self._activation, sleep=self.sleep,
        )  # fmt: skip
        self._bookkeeping = Bookkeeper(run=self._run)

    def apply(self, plan: Plan) -> ApplyResult:
        groups = list(plan.by_service().values())
        # `max_parallel` bounds the cloud calls in flight (the slots below); more services
        # than that are worked on at once, so one waiting for its instances to boot or
        # pass their gate does not keep another's calls from being made.
        in_flight = min(GROUPS_PER_SLOT * self.desired.policy.max_parallel, MAX_GROUPS_IN_FLIGHT)
        workers = max(1, min(in_flight, len(groups) or 1))
        # Each worker runs in a copy of the caller's context, so log lines keep the run id.
        contexts = [contextvars.copy_context() for _ in groups]
        slots = LaunchSlots(total=self.desired.policy.max_parallel, providers=list(self.providers))
        self._launcher.slots = slots
        self._teardown.slots = slots
        if plan.actions:
            self.progress.start(len(plan.actions))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apply") as pool:
                list(pool.map(lambda c, g: c.run(self._run_group, g), contexts, groups))
        finally:
            slots.close()
            if plan.actions:
                self.progress.finish()
        return self.result

    # ------------------------------------------------------------ one service

    def _run_group(self, actions: list[Action]) -> None:
        run = self._run
        first = actions[0]
        bound = log.bind(run=self.run_id, env=first.env, service=first.service)
        run.activating.update(
            (a.env, a.service, a.generation) for a in actions if a.kind in GATED_KINDS
        )
        run.waiting.update(
            (a.env, a.service, a.generation)
            for a in actions
            if a.kind in (ActionKind.PREPARE, ActionKind.CHECK)
        )
        batch: list[Action] = []
        try:
            for action in actions:
                if action.kind is ActionKind.CREATE:
                    batch.append(action)
                    continue
                if batch:
                    self._launcher.create_batch(batch)
                    batch = []
                run.check_stop()
                self._dispatch(action)
            if batch:
                self._launcher.create_batch(batch)
            self._bookkeeping.record_count(actions)
        except Interrupted:
            bound.warning("service_apply_interrupted")
            with run.lock:
                self.result.interrupted = True
        except ReconcilerError as exc:
            bound.error("service_apply_failed", error=str(exc))
            with run.lock:
                self.result.failures.append(f"{first.env}/{first.service}: {exc}")
            if run.rolled.get((first.env, first.service)):
                try:
                    roll_back_batches(
                        run, self._launcher, teardown=self._teardown, gate=self.gate,
                        traffic=self.traffic, env=first.env, service=first.service,
                    )  # fmt: skip
                except ReconcilerError as back:
                    bound.error("rolling_rollback_failed", error=str(back))
                    with run.lock:
                        self.result.failures.append(f"rollback of {first.service}: {back}")

    def _dispatch(self, action: Action) -> None:
        handlers = {
            ActionKind.DESTROY: self._teardown.destroy,
            ActionKind.ACTIVATE: self._activation.activate,
            ActionKind.PREPARE: self._activation.prepare,
            ActionKind.CHECK: self._activation.check,
            ActionKind.HANDOVER: self._activation.hand_over,
            ActionKind.RETIRE: self._bookkeeping.retire,
            ActionKind.ADOPT: self._bookkeeping.adopt,
        }
        handlers[action.kind](action)
        self._run.count(action.kind.value)


def apply_plan(
    plan: Plan,
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    providers: Mapping[str, ComputeProvider],
    ledger: Ledger,
    run_id: int,
    gate: HealthGate | None = None,
    should_stop: Callable[[], bool] = never_stop,
    heartbeat: Callable[[], None] = no_heartbeat,
    traffic: TrafficPort | None = None,
    notifications: Notifications | None = None,
    progress: ProgressHook | None = None,
    volumes: Sequence[ObservedVolume] = (),
) -> ApplyResult:
    """Execute `plan`; every create and destroy is an operation row before its API call.

    `progress` defaults to a progress bar on a terminal and log lines elsewhere."""
    applier = Applier(
        desired=desired,
        observed=observed,
        providers=providers,
        ledger=ledger,
        run_id=run_id,
        gate=gate or RunningGate(),
        should_stop=should_stop,
        heartbeat=heartbeat,
        traffic=traffic or TrafficPort(),
        notifications=notifications or Silent(),
        progress=progress or progress_for(),
        volumes=volumes,
    )
    return applier.apply(plan)
