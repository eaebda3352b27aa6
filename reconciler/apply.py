"""Apply: execute a Plan against the providers, recording intent and outcome in the ledger.

Owns: ordering inside a service (create batch → wait for running → health gate →
activate → destroy), bounded parallelism across services, and compensation when a
rollout fails (destroy the new instances, mark the generation failed, leave the old
one serving). Must not: decide what to do (the planner does) or retry API calls (the
adapters do, at the edge).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from threading import Lock
from typing import NoReturn, Protocol

import structlog

from reconciler.errors import ReconcilerError
from reconciler.extensions import PluginError
from reconciler.ledger import Ledger
from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    GenerationState,
    ObservedInstance,
    Plan,
    Reason,
    ServiceSpec,
    Strategy,
)
from reconciler.notify import Notifications, Silent
from reconciler.parallel import LaunchSlots
from reconciler.progress import NoProgress, ProgressHook, progress_for
from reconciler.providers import ComputeProvider, LaunchRequest, ownership_tags
from reconciler.rolling import roll_back_batches
from reconciler.rollout import TrafficPort
from reconciler.waiter import BootFailed, BootWaiter

log = structlog.get_logger(__name__)

POLL_INTERVAL = 1.0
# Destroys of instances that may be in the load balancer: detached before they go.
TAKES_TRAFFIC = frozenset({Reason.SURPLUS, Reason.TAMPERED, Reason.MISSING, Reason.SPEC_CHANGED})


def utcnow() -> datetime:
    return datetime.now(UTC)


class HealthGate(Protocol):
    """Decides whether freshly running instances may take traffic (plugins: issue 4)."""

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        """None when every instance passed, else the reason the gate failed."""
        ...


class RunningGate:
    """The gate of the walking skeleton: an instance that runs counts as healthy."""

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        return None


@dataclass
class ApplyResult:
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures


class RolloutFailed(ReconcilerError):
    """A batch of new instances did not come up; the service's remaining steps are skipped."""


class Interrupted(ReconcilerError):
    """A stop was requested: the call in flight finished, nothing new was started."""


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


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
    should_stop: Callable[[], bool] = _never
    heartbeat: Callable[[], None] = _nothing
    traffic: TrafficPort = field(default_factory=TrafficPort)
    notifications: Notifications = field(default_factory=Silent)
    result: ApplyResult = field(default_factory=ApplyResult)
    _lock: Lock = field(default_factory=Lock)
    # Per (env, service, generation): instances launched (and gated) by this apply.
    _launched: dict[tuple[str, str, int], list[ObservedInstance]] = field(default_factory=dict)
    _activating: set[tuple[str, str, int]] = field(default_factory=set)
    _destroyed: set[str] = field(default_factory=set)
    # Rolling updates: old instances taken out so far, and the user data to relaunch them.
    _rolled: dict[tuple[str, str], list[ObservedInstance]] = field(default_factory=dict)
    _old_user_data: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # Shared by every service group: one boot-wait listing per provider per poll.
    _waiter: BootWaiter | None = None
    # Launches of one batch run concurrently, bounded per provider and overall.
    _launch_slots: LaunchSlots | None = None
    progress: ProgressHook = field(default_factory=NoProgress)

    def apply(self, plan: Plan) -> ApplyResult:
        groups = list(plan.by_service().values())
        workers = max(1, min(self.desired.policy.max_parallel, len(groups) or 1))
        # Each worker runs in a copy of the caller's context, so log lines keep the run id.
        contexts = [contextvars.copy_context() for _ in groups]
        self._launch_slots = LaunchSlots(
            total=self.desired.policy.max_parallel, providers=list(self.providers)
        )
        if plan.actions:
            self.progress.start(len(plan.actions))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apply") as pool:
                list(pool.map(lambda c, g: c.run(self._run_group, g), contexts, groups))
        finally:
            self._launch_slots.close()
            if plan.actions:
                self.progress.finish()
        return self.result

    def _check_stop(self) -> None:
        self.heartbeat()
        if self.should_stop():
            raise Interrupted("stop requested")

    # ------------------------------------------------------------ one service

    def _run_group(self, actions: list[Action]) -> None:
        first = actions[0]
        bound = log.bind(run=self.run_id, env=first.env, service=first.service)
        self._activating.update(
            (a.env, a.service, a.generation) for a in actions if a.kind is ActionKind.ACTIVATE
        )
        batch: list[Action] = []
        try:
            for action in actions:
                if action.kind is ActionKind.CREATE:
                    batch.append(action)
                    continue
                if batch:
                    self._create_batch(batch)
                    batch = []
                self._check_stop()
                self._dispatch(action)
            if batch:
                self._create_batch(batch)
            self._record_count(actions)
        except Interrupted:
            bound.warning("service_apply_interrupted")
            with self._lock:
                self.result.interrupted = True
        except ReconcilerError as exc:
            bound.error("service_apply_failed", error=str(exc))
            with self._lock:
                self.result.failures.append(f"{first.env}/{first.service}: {exc}")
            if self._rolled.get((first.env, first.service)):
                try:
                    roll_back_batches(self, first.env, first.service)
                except ReconcilerError as back:
                    bound.error("rolling_rollback_failed", error=str(back))
                    with self._lock:
                        self.result.failures.append(f"rollback of {first.service}: {back}")

    def _dispatch(self, action: Action) -> None:
        handlers = {
            ActionKind.DESTROY: self._destroy,
            ActionKind.ACTIVATE: self._activate,
            ActionKind.RETIRE: self._retire,
            ActionKind.ADOPT: self._adopt,
        }
        handlers[action.kind](action)
        self._count(action.kind.value)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.result.counts[key] = self.result.counts.get(key, 0) + n
        self.progress.advance(key, n)

    def _spec(self, action: Action) -> ServiceSpec:
        spec = self.desired.service(action.env, action.service)
        if spec is None:  # the planner only creates for desired services
            raise ReconcilerError(f"{action.env}/{action.service} is not in the desired state")
        return spec

    # ------------------------------------------------------------ creates

    def _create_batch(self, batch: list[Action]) -> None:
        spec = self._spec(batch[0])
        provider = self.providers[spec.provider]
        generation = batch[0].generation
        new_generation = batch[0].reason is Reason.SPEC_CHANGED
        if new_generation:
            self.ledger.record_generation(
                env=spec.env,
                service=spec.name,
                number=generation,
                provider=spec.provider,
                fingerprint=spec.fingerprint,
                image=spec.image,
                size=spec.size,
                count=spec.count,
                commit=self.desired.commit,
                state=GenerationState.CREATING,
                at=self.now(),
            )
        launched: list[tuple[str, ObservedInstance]] = []
        try:
            launched, launch_error = self._launch_batch(batch, spec, provider)
            if launch_error is not None:
                raise launch_error
            running = self._wait_running([i for _, i in launched], provider, spec)
            failure = self.gate.wait_healthy(running, spec)
            if failure:
                raise RolloutFailed(f"health gate: {failure}")
        except Interrupted:
            # The launches happened; the next pass finds them by their tags and resumes.
            for op, instance in launched:
                self.ledger.mark_operation(
                    op,
                    state="done",
                    at=self.now(),
                    instance_id=instance.id,
                    detail="stopped before the boot wait finished",
                )
            raise
        except ReconcilerError as exc:
            self._compensate(launched, provider, spec, generation, new_generation, str(exc))
            raise
        key = (spec.env, spec.name, generation)
        self._launched.setdefault(key, []).extend(running)
        if key not in self._activating or spec.strategy is Strategy.ROLLING:
            # Replacements inside the serving generation take traffic once healthy.
            try:
                self.traffic.switch(spec, old=[], new=running)
            except PluginError as exc:
                self._compensate(launched, provider, spec, generation, False, str(exc))
                raise RolloutFailed(f"traffic switch: {exc}") from None
        for action, (op, instance) in zip(batch, launched, strict=True):
            self.ledger.mark_operation(op, state="done", at=self.now(), instance_id=instance.id)
            self.ledger.set_instance_state(instance.id, state="running", at=self.now())
            if action.reason in (Reason.MISSING, Reason.TAMPERED):
                # What the thrash detector counts: instances that had to be replaced.
                self.ledger.record_event(
                    kind="instance_replaced", at=self.now(), run=self.run_id, env=spec.env,
                    service=spec.name, generation=generation, instance=instance.id,
                    detail={"reason": action.reason.value, "replaces": action.replaces},
                )  # fmt: skip
        if new_generation and launched:
            self.ledger.set_generation_fields(
                spec.env, spec.name, generation, image_id=launched[0][1].image
            )
        self._count("create", len(launched))

    def _launch_batch(
        self, batch: list[Action], spec: ServiceSpec, provider: ComputeProvider
    ) -> tuple[list[tuple[str, ObservedInstance]], ReconcilerError | None]:
        """Launch the batch's slots side by side (bounded by the launch slots), each with
        its own intent row before its call. Returns the launches that happened, in batch
        order, and the failure to act on: a real error before a stop request."""

        def launch(action: Action) -> tuple[str, ObservedInstance]:
            self._check_stop()
            return self._launch(action, spec, provider)

        slots = self._launch_slots or LaunchSlots(total=1, providers=[spec.provider])
        outcomes = slots.run(spec.provider, [partial(launch, a) for a in batch])
        launched = [o for o in outcomes if not isinstance(o, ReconcilerError)]
        errors = [o for o in outcomes if isinstance(o, ReconcilerError)]
        real = [e for e in errors if not isinstance(e, Interrupted)]
        first = real or errors
        return launched, (first[0] if first else None)

    def _launch_image(self, spec: ServiceSpec, generation: int) -> str:
        """What the generation's first launch resolved its image to, once it has one: an
        image *name* re-pointed at a newer upload must not mix images inside a generation
        (those instances would read as tampered and be replaced again and again)."""
        for row in self.ledger.generation_rows(env=spec.env, service=spec.name):
            if row["number"] == generation and row.get("image_id"):
                return str(row["image_id"])
        return spec.image

    def _launch(
        self, action: Action, spec: ServiceSpec, provider: ComputeProvider
    ) -> tuple[str, ObservedInstance]:
        slot = action.slot or 1
        op = self.ledger.begin_operation(
            run=self.run_id,
            kind="create",
            target=f"{spec.env}/{spec.name}/g{action.generation}/{slot}",
            at=self.now(),
        )
        tags = ownership_tags(
            owner=self.desired.owner,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            fingerprint=spec.fingerprint,
            op=op,
            slot=slot,
        )
        request = LaunchRequest(
            name=tags["Name"],
            image=self._launch_image(spec, action.generation),
            size=spec.size,
            tags=tags,
            op=op,
            user_data=spec.user_data,
        )
        try:
            instance = provider.create_instance(request)
        except ReconcilerError as exc:
            self.ledger.mark_operation(op, state="failed", at=self.now(), detail=str(exc))
            raise
        self.ledger.mark_operation(op, state="issued", at=self.now(), instance_id=instance.id)
        price = spec.price_per_hour
        if price is None:
            price = provider.price_per_hour(spec.size)
        self.ledger.record_instance(
            id=instance.id,
            provider=spec.provider,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            slot=slot,
            name=tags["Name"],
            image=instance.image,
            size=instance.size,
            price_per_hour=price,
            state="pending",
            created_at=self.now(),
            op=op,
        )
        if action.replaces and action.reason is Reason.MISSING:
            self.ledger.set_instance_state(
                action.replaces, state="gone", at=self.now(), reason=Reason.MISSING.value
            )
        log.info(
            "instance_created",
            run=self.run_id,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            instance=instance.id,
            reason=action.reason.value,
        )
        return op, instance

    def _wait_running(
        self, instances: list[ObservedInstance], provider: ComputeProvider, spec: ServiceSpec
    ) -> list[ObservedInstance]:
        """Wait on the apply's shared boot waiter: one listing per provider per poll
        serves every service group waiting at that moment."""
        with self._lock:
            if self._waiter is None:
                self._waiter = BootWaiter(self.desired.owner, interval=POLL_INTERVAL,
                                          sleep=self.sleep)  # fmt: skip
            waiter = self._waiter
        try:
            return waiter.wait_running(
                instances, provider, timeout=self.desired.policy.boot_timeout,
                check_stop=self._check_stop,
            )  # fmt: skip
        except BootFailed as exc:
            raise RolloutFailed(str(exc)) from None

    def _compensate(
        self,
        launched: list[tuple[str, ObservedInstance]],
        provider: ComputeProvider,
        spec: ServiceSpec,
        generation: int,
        new_generation: bool,
        why: str,
    ) -> None:
        """Undo a failed batch: the new instances go, the serving generation stays."""
        for op, instance in launched:
            self.ledger.mark_operation(op, state="failed", at=self.now(), detail=why)
            self._terminate(instance.id, spec.provider, provider, reason=f"failed: {why}")
        if new_generation:
            self.ledger.set_generation_state(
                spec.env,
                spec.name,
                generation,
                state=GenerationState.FAILED,
                at=self.now(),
                reason=f"failed: {why}",
            )
        self.ledger.record_event(
            kind="rollout_failed",
            at=self.now(),
            run=self.run_id,
            env=spec.env,
            service=spec.name,
            generation=generation,
            detail={"error": why},
        )
        if new_generation:
            self._notify_failed(spec, generation, why)

    def _notify_failed(self, spec: ServiceSpec, generation: int, why: str) -> None:
        self.notifications.send(
            "generation-failed",
            f"{spec.env}/{spec.name} generation {generation} ({spec.image}) failed: {why}; "
            "the previous generation keeps serving",
            env=spec.env, service=spec.name, generation=generation, commit=self.desired.commit,
            detail={"error": why},
        )  # fmt: skip

    # ------------------------------------------------------------ other actions

    def _destroy(self, action: Action) -> None:
        provider = self.providers[action.provider]
        assert action.instance_id is not None
        reason = action.reason.value + (f" ({action.detail})" if action.detail else "")
        spec = self.desired.service(action.env, action.service)
        serving = [i for i in self.observed if i.id == action.instance_id and i.alive]
        rolling = spec is not None and spec.strategy is Strategy.ROLLING
        if (
            rolling
            and serving
            and action.reason is Reason.SPEC_CHANGED
            and "batch" in action.detail
        ):
            key = (action.env, action.service)
            if key not in self._old_user_data:
                # Read before the first old instance goes: a rollback relaunches its like.
                self._old_user_data[key] = provider.user_data_of(action.instance_id)
            self._rolled.setdefault(key, []).extend(serving)
        if spec is not None and serving and action.reason in TAKES_TRAFFIC:
            # Out of the load balancer before it goes, so no request hits a dying instance.
            try:
                self.traffic.switch(spec, old=serving, new=[])
            except PluginError as exc:
                raise ReconcilerError(f"traffic switch before destroy: {exc}") from None
        self._terminate(action.instance_id, action.provider, provider, reason=reason)
        log.info(
            "instance_destroyed",
            run=self.run_id,
            env=action.env,
            service=action.service,
            generation=action.generation,
            instance=action.instance_id,
            reason=action.reason.value,
        )

    def _terminate(
        self, instance_id: str, provider_name: str, provider: ComputeProvider, *, reason: str
    ) -> None:
        op = self.ledger.begin_operation(
            run=self.run_id, kind="destroy", target=instance_id, at=self.now()
        )
        try:
            provider.destroy_instance(instance_id)
        except ReconcilerError as exc:
            self.ledger.mark_operation(op, state="failed", at=self.now(), detail=str(exc))
            raise
        self.ledger.mark_operation(op, state="done", at=self.now(), instance_id=instance_id)
        self.ledger.set_instance_state(instance_id, state="destroyed", at=self.now(), reason=reason)
        self._destroyed.add(instance_id)

    def _activate(self, action: Action) -> None:
        """Healthy → switch traffic → mark active → previous to standby."""
        spec = self._spec(action)
        key = (action.env, action.service, action.generation)
        launched = self._launched.get(key, [])
        gated = {i.id for i in launched}
        new = launched + [
            i for i in self._alive(action.env, action.service, action.generation)
            if i.id not in gated
        ]  # fmt: skip
        failure = self.gate.wait_healthy([i for i in new if i.id not in gated], spec)
        if failure:
            self._fail_activation(action, spec, f"health gate: {failure}")
        old = self._alive(action.env, action.service, action.previous)
        try:
            self.traffic.switch(spec, old=old, new=new)
        except PluginError as exc:
            try:
                self.traffic.switch(spec, old=new, new=old)  # back to where it was
            except PluginError as back:
                log.error("traffic_switch_back_failed", service=spec.name, error=str(back))
            self._fail_activation(action, spec, f"traffic switch: {exc}")
        at = self.now()
        self.ledger.set_generation_state(
            action.env, action.service, action.generation, state=GenerationState.ACTIVE, at=at
        )
        if action.previous is not None:
            self.ledger.set_generation_state(
                action.env,
                action.service,
                action.previous,
                state=GenerationState.STANDBY,
                at=at,
                reason=f"replaced by g{action.generation}",
            )
        self.ledger.record_event(
            kind="generation_activated",
            at=at,
            run=self.run_id,
            env=action.env,
            service=action.service,
            generation=action.generation,
            detail={"previous": action.previous, "note": action.detail},
        )
        log.info(
            "generation_activated",
            run=self.run_id,
            env=action.env,
            service=action.service,
            generation=action.generation,
            previous=action.previous,
        )
        replacing = f", replacing generation {action.previous}" if action.previous else ""
        self.notifications.send(
            "generation-activated",
            f"{spec.env}/{spec.name} generation {action.generation} ({spec.image}) is active"
            f"{replacing}",
            env=spec.env, service=spec.name, generation=action.generation,
            commit=self.desired.commit, detail={"previous": action.previous},
        )  # fmt: skip

    def _alive(self, env: str, service: str, generation: int | None) -> list[ObservedInstance]:
        if generation is None:
            return []
        return [
            i for i in self.observed
            if (i.env, i.service, i.generation) == (env, service, generation) and i.alive
            and i.id not in self._destroyed
        ]  # fmt: skip

    def _fail_activation(self, action: Action, spec: ServiceSpec, why: str) -> NoReturn:
        """The old generation keeps serving; a new generation's instances go."""
        provider = self.providers[spec.provider]
        rows = self.ledger.generation_rows(env=action.env, service=action.service)
        state = next((r["state"] for r in rows if r["number"] == action.generation), None)
        launched = self._launched.get((action.env, action.service, action.generation), [])
        doomed = {i.id for i in launched}
        if state == GenerationState.CREATING.value:
            doomed |= {i.id for i in self._alive(action.env, action.service, action.generation)}
            self.ledger.set_generation_state(
                action.env, action.service, action.generation, state=GenerationState.FAILED,
                at=self.now(), reason=f"failed: {why}",
            )  # fmt: skip
            self._notify_failed(spec, action.generation, why)
        for instance_id in sorted(doomed):
            self._terminate(instance_id, spec.provider, provider, reason=f"failed: {why}")
        self.ledger.record_event(
            kind="rollout_failed", at=self.now(), run=self.run_id, env=action.env,
            service=action.service, generation=action.generation, detail={"error": why},
        )  # fmt: skip
        raise RolloutFailed(why)

    def _retire(self, action: Action) -> None:
        reason = action.reason.value + (f" ({action.detail})" if action.detail else "")
        self.ledger.set_generation_state(
            action.env,
            action.service,
            action.generation,
            state=GenerationState.DESTROYED,
            at=self.now(),
            reason=reason,
        )

    def _adopt(self, action: Action) -> None:
        members = [
            i
            for i in self.observed
            if (i.env, i.service, i.generation) == (action.env, action.service, action.generation)
            and i.alive
        ]
        sample = members[0]
        at = self.now()
        state = action.adopt_as or GenerationState.STANDBY
        self.ledger.record_generation(
            env=action.env,
            service=action.service,
            number=action.generation,
            provider=sample.provider,
            fingerprint=sample.fingerprint or "",
            image=sample.image,
            size=sample.size,
            count=len(members),
            commit=None,
            state=state,
            at=at,
            reason=Reason.UNRECORDED_GENERATION.value,
        )
        self.ledger.set_generation_state(
            action.env, action.service, action.generation, state=state, at=at
        )
        # What the tamper check compares later listings with, as for a launch of ours.
        self.ledger.set_generation_fields(
            action.env, action.service, action.generation, image_id=sample.image
        )
        spec = self.desired.service(action.env, action.service)
        for instance in members:
            # Priced as a launch would be, so adopted instances do not cost nothing.
            price = spec.price_per_hour if spec is not None else None
            if price is None and instance.provider in self.providers:
                price = self.providers[instance.provider].price_per_hour(instance.size)
            self.ledger.record_instance(
                id=instance.id,
                provider=instance.provider,
                env=action.env,
                service=action.service,
                generation=action.generation,
                slot=instance.slot,
                name=instance.name,
                image=instance.image,
                size=instance.size,
                price_per_hour=price,
                state=instance.state.value,
                created_at=instance.launched_at or at,
                op=instance.op,
            )

    def _record_count(self, actions: list[Action]) -> None:
        """Scaling inside the active generation changes its recorded count."""
        scaled = [a for a in actions if a.reason in (Reason.SURPLUS, Reason.DEFICIT)]
        spec = self.desired.service(actions[0].env, actions[0].service)
        if scaled and spec is not None:
            self.ledger.set_generation_fields(
                spec.env, spec.name, scaled[0].generation, count=spec.count
            )


def apply_plan(
    plan: Plan,
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    providers: Mapping[str, ComputeProvider],
    ledger: Ledger,
    run_id: int,
    gate: HealthGate | None = None,
    should_stop: Callable[[], bool] = _never,
    heartbeat: Callable[[], None] = _nothing,
    traffic: TrafficPort | None = None,
    notifications: Notifications | None = None,
    progress: ProgressHook | None = None,
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
    )
    return applier.apply(plan)
