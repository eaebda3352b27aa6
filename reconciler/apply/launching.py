"""Creates: a batch of new instances launched, waited on and gated.

Owns: the create batch (new generation row → launches side by side, each with its
intent row before its call → wait for running on the apply's shared boot waiter →
health gate → traffic for replacements inside the serving generation → operations
done, instances running), the image a generation launches with, and handing a failed
batch to the activation's compensation. Must not: activate a generation (activation
does), retry API calls (the adapters do) or decide what to launch (the planner does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from reconciler.apply.activation import Activator
from reconciler.apply.gates import TrafficPort
from reconciler.apply.parallel import LaunchSlots
from reconciler.apply.run import ApplyRun, HealthGate
from reconciler.apply.waiter import BootWaiter
from reconciler.errors import BootFailed, Interrupted, PluginError, ReconcilerError, RolloutFailed
from reconciler.model import (
    Action,
    GenerationState,
    ObservedInstance,
    Reason,
    ServiceSpec,
    Strategy,
)
from reconciler.providers import ComputeProvider, LaunchRequest, ownership_tags
from reconciler.providers.base import instance_price

log = structlog.get_logger(__name__)

FIRST_LOOK = 0.25  # seconds before the second look at a batch's instances (then doubling)


@dataclass(kw_only=True)
class Launcher:
    run: ApplyRun
    gate: HealthGate
    traffic: TrafficPort
    activation: Activator
    sleep: Callable[[float], None]
    # Launches of one batch run concurrently, bounded per provider and overall; the
    # apply sets them for its duration.
    slots: LaunchSlots | None = None
    # Shared by every service group: one boot-wait listing per provider per poll.
    _waiter: BootWaiter | None = field(default=None, init=False)

    def create_batch(self, batch: list[Action]) -> None:
        run = self.run
        spec = run.spec(batch[0])
        provider = run.providers[spec.provider]
        generation = batch[0].generation
        new_generation = batch[0].reason is Reason.SPEC_CHANGED
        if new_generation:
            run.ledger.record_generation(
                env=spec.env,
                service=spec.name,
                number=generation,
                provider=spec.provider,
                fingerprint=spec.fingerprint,
                image=spec.image,
                size=spec.size,
                count=spec.count,
                commit=run.desired.commit,
                state=GenerationState.CREATING,
                at=run.now(),
            )
        launched: list[tuple[str, ObservedInstance]] = []
        try:
            with self._shared_waiter().launching(provider.name) as ticket:
                launched, launch_error = self._launch_batch(batch, spec, provider)
                if launch_error is not None:
                    raise launch_error
                where = f"{spec.env}/{spec.name} g{generation}"
                run.progress.phase(f"booting {len(launched)} of {where}")
                running = self.wait_running([i for _, i in launched], provider, spec,
                                            ticket=ticket)  # fmt: skip
            run.progress.phase(f"health gate of {where}")
            failure = self.gate.wait_healthy(running, spec)
            if failure:
                raise RolloutFailed(f"health gate: {failure}")
        except Interrupted:
            # The launches happened; the next pass finds them by their tags and resumes.
            for op, instance in launched:
                run.ledger.mark_operation(
                    op,
                    state="done",
                    at=run.now(),
                    instance_id=instance.id,
                    detail="stopped before the boot wait finished",
                )
            raise
        except ReconcilerError as exc:
            self.activation.compensate(
                launched, provider, spec, generation, new_generation=new_generation, why=str(exc)
            )
            raise
        # Last resort: an exception nobody expected (a bug, here or in a library) after
        # instances were launched must not leave them running in a generation stuck in
        # `creating`; they are compensated like any failed rollout, and the pass goes on.
        except Exception as exc:
            log.exception("rollout_crashed", env=spec.env, service=spec.name,
                          generation=generation, error_type=type(exc).__name__)  # fmt: skip
            why = f"unexpected {type(exc).__name__} during the rollout"
            self.activation.compensate(
                launched, provider, spec, generation, new_generation=new_generation, why=why
            )
            raise RolloutFailed(why) from exc
        key = (spec.env, spec.name, generation)
        run.launched.setdefault(key, []).extend(running)
        if key not in run.activating or spec.strategy is Strategy.ROLLING:
            # Replacements inside the serving generation take traffic once healthy.
            try:
                self.traffic.switch(spec, old=[], new=running)
            except PluginError as exc:
                self.activation.compensate(
                    launched, provider, spec, generation, new_generation=False, why=str(exc)
                )
                raise RolloutFailed(f"traffic switch: {exc}") from None
        # The batch's outcome in one transaction (the intents were each durable before
        # their calls; these records follow them).
        with run.ledger.batch("batch running"):
            for action, (op, instance) in zip(batch, launched, strict=True):
                run.ledger.mark_operation(op, state="done", at=run.now(), instance_id=instance.id)
                run.ledger.set_instance_state(instance.id, state="running", at=run.now())
                if action.reason in (Reason.MISSING, Reason.TAMPERED):
                    # What the thrash detector counts: instances that had to be replaced.
                    run.ledger.record_event(
                        kind="instance_replaced", at=run.now(), run=run.run_id, env=spec.env,
                        service=spec.name, generation=generation, instance=instance.id,
                        detail={"reason": action.reason.value, "replaces": action.replaces},
                    )  # fmt: skip
            if new_generation and launched:
                run.ledger.set_generation_fields(
                    spec.env, spec.name, generation, image_id=launched[0][1].image
                )
        run.count("create", len(launched))

    def _launch_batch(
        self, batch: list[Action], spec: ServiceSpec, provider: ComputeProvider
    ) -> tuple[list[tuple[str, ObservedInstance]], ReconcilerError | None]:
        """Launch the batch's slots side by side (bounded by the launch slots), each with
        its own intent row before its call. Returns the launches that happened, in batch
        order, and the failure to act on: a real error before a stop request."""

        def launch(action: Action) -> tuple[str, ObservedInstance]:
            self.run.check_stop()
            return self.launch(action, spec, provider)

        slots = self.slots or LaunchSlots(total=1, providers=[spec.provider])
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
        for row in self.run.ledger.generation_rows(env=spec.env, service=spec.name):
            if row["number"] == generation and row.get("image_id"):
                return str(row["image_id"])
        return spec.image

    def launch(
        self, action: Action, spec: ServiceSpec, provider: ComputeProvider
    ) -> tuple[str, ObservedInstance]:
        run = self.run
        slot = action.slot or 1
        op = run.ledger.begin_operation(
            run=run.run_id,
            kind="create",
            target=f"{spec.env}/{spec.name}/g{action.generation}/{slot}",
            at=run.now(),
        )
        tags = ownership_tags(
            owner=run.desired.owner,
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
            zone=self._volume_zone(spec),
        )
        try:
            instance = provider.create_instance(request)
        except ReconcilerError as exc:
            run.ledger.mark_operation(op, state="failed", at=run.now(), detail=str(exc))
            raise
        price = instance_price(spec.price_per_hour, provider, spec.size)
        with run.ledger.batch("launch issued"):
            run.ledger.mark_operation(op, state="issued", at=run.now(), instance_id=instance.id)
            self._record(action, spec, instance, op=op, slot=slot, name=tags["Name"], price=price)
        log.info(
            "instance_created",
            run=run.run_id,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            instance=instance.id,
            reason=action.reason.value,
        )
        return op, instance

    def _record(
        self, action: Action, spec: ServiceSpec, instance: ObservedInstance, *, op: str,
        slot: int, name: str, price: float | None,
    ) -> None:  # fmt: skip
        run = self.run
        run.ledger.record_instance(
            id=instance.id,
            provider=spec.provider,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            slot=slot,
            name=name,
            image=instance.image,
            size=instance.size,
            price_per_hour=price,
            state="pending",
            created_at=run.now(),
            op=op,
        )
        if action.replaces and action.reason is Reason.MISSING:
            run.ledger.set_instance_state(
                action.replaces, state="gone", at=run.now(), reason=Reason.MISSING.value
            )

    def _volume_zone(self, spec: ServiceSpec) -> str | None:
        """A service with a volume launches where its volume is (a volume attaches only
        to an instance in its own zone); before it has one, anywhere."""
        if spec.volume is None:
            return None
        zones = [v.zone for v in self.run.volumes if (v.env, v.service) == (spec.env, spec.name)]
        return zones[0] if zones else None

    def _shared_waiter(self) -> BootWaiter:
        run = self.run
        with run.lock:
            if self._waiter is None:
                self._waiter = BootWaiter(run.desired.owner, interval=FIRST_LOOK,
                                          sleep=self.sleep)  # fmt: skip
            return self._waiter

    def wait_running(
        self, instances: list[ObservedInstance], provider: ComputeProvider, spec: ServiceSpec,
        *, ticket: int | None = None,
    ) -> list[ObservedInstance]:  # fmt: skip
        """Wait on the apply's shared boot waiter: one listing per provider per poll
        serves every service group waiting at that moment (`ticket`: the batch's, from
        the waiter's `launching`)."""
        run = self.run
        try:
            return self._shared_waiter().wait_running(
                instances, provider, timeout=run.desired.policy.boot_timeout,
                check_stop=run.check_stop, ticket=ticket,
            )  # fmt: skip
        except BootFailed as exc:
            raise RolloutFailed(str(exc)) from None
