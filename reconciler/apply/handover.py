"""Handing a service's data volume from one instance to another (`volume:`).

Owns: the hand-over action and its reverse. Each step is read from what the cloud
shows now and is an operation row before its call, so a pass stopped or killed at any
step is finished by the next one from where it stood: create the volume beside the
instance when there is none, snapshot (when asked, once per generation), stop the
instance holding it (the fence: only one instance can write), detach naming that
instance, attach, start the target when it is stopped. The volume is attached to a
new instance only once no running instance holds it.
Must not: delete a volume (only `reconciler volume delete` does), or decide which
instance takes it (the planner does, the activation's failure path gives it back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from reconciler.apply.run import ApplyRun
from reconciler.errors import ReconcilerError, RolloutFailed
from reconciler.model import Action, ObservedInstance, ObservedVolume, ServiceSpec
from reconciler.providers.base import TAG_OWNER, VolumePort, VolumeRequest, volume_tags

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.5
# On a snapshot: the generation whose hand-over it was taken before ("g2").
TAG_SNAPSHOT_FOR = "reconciler:before"
RUNNING = ("pending", "running")


@dataclass(kw_only=True)
class VolumeMover:
    run: ApplyRun
    sleep: Callable[[float], None] = time.sleep

    # ------------------------------------------------------------ actions

    def handover(self, action: Action) -> None:
        """Bring the volume to the generation's instance; RolloutFailed when it cannot
        (the activation's failure path then gives it back)."""
        spec = self.run.spec(action)
        target = self.instance_of(action.env, action.service, action.generation)
        if target is None:
            raise RolloutFailed(
                f"generation {action.generation} has no instance to take the volume"
            )
        assert spec.volume is not None
        snapshot = action.previous is not None and spec.volume.snapshot_before_handover
        self.move(spec, to=target, snapshot_for=action.generation if snapshot else None)

    def give_back(self, spec: ServiceSpec, generation: int) -> None:
        """The reverse of a failed hand-over: the volume back on `generation`'s instance
        (stopped by the hand-over), which is started again."""
        target = self.instance_of(spec.env, spec.name, generation, alive_only=False)
        if target is None:
            log.error("volume_give_back_impossible", env=spec.env, service=spec.name,
                      generation=generation)  # fmt: skip
            return
        self.move(spec, to=target, snapshot_for=None)

    # ------------------------------------------------------------ the steps

    def move(self, spec: ServiceSpec, *, to: ObservedInstance, snapshot_for: int | None) -> None:
        volume_spec = spec.volume
        assert volume_spec is not None
        port = self._port(spec)
        volume = self._current(spec, port)
        if volume is None:
            volume = self._create(spec, port, zone=to.zone)
        if to.zone and volume.zone and to.zone != volume.zone:
            raise RolloutFailed(
                f"instance {to.id} is in {to.zone} and the volume {volume.id} in {volume.zone}"
            )
        holder = volume.attached_to
        if holder is not None and holder != to.id:
            if port.instance_state(holder) in RUNNING:
                if snapshot_for is not None:
                    self._snapshot(spec, port, volume, snapshot_for)
                self._step(spec, "instance-stop", holder, lambda: port.stop_instance(holder))
                self._wait(f"{holder} to stop", lambda: port.instance_state(holder)
                           in ("stopped", "terminated", None))  # fmt: skip
                self._event("instance_stopped", spec, instance=holder, volume=volume.id)
            self._step(spec, "volume-detach", volume.id,
                       lambda: port.detach(volume.id, holder))  # fmt: skip
            self._wait(f"{volume.id} to detach from {holder}",
                       lambda: self._attached_to(port, volume.id) is None)  # fmt: skip
            self._event("volume_detached", spec, instance=holder, volume=volume.id)
        if self._attached_to(port, volume.id) != to.id:
            self._step(spec, "volume-attach", volume.id,
                       lambda: port.attach(volume.id, to.id, volume_spec.device))  # fmt: skip
            self._wait(f"{volume.id} to attach to {to.id}",
                       lambda: self._attached_to(port, volume.id) == to.id)  # fmt: skip
            self._event("volume_attached", spec, instance=to.id, volume=volume.id,
                        device=volume_spec.device)  # fmt: skip
        if port.instance_state(to.id) not in RUNNING:
            self._step(spec, "instance-start", to.id, lambda: port.start_instance(to.id))
            self._wait(f"{to.id} to run", lambda: port.instance_state(to.id) == "running")
            self._event("instance_started", spec, instance=to.id, volume=volume.id)
        log.info("volume_handed_over", env=spec.env, service=spec.name, volume=volume.id,
                 instance=to.id)  # fmt: skip

    def _create(self, spec: ServiceSpec, port: VolumePort, *, zone: str | None) -> ObservedVolume:
        assert spec.volume is not None
        if not zone:
            raise RolloutFailed(f"the cloud did not say which zone {spec.name}'s instance is in")
        run = self.run
        op = run.ledger.begin_operation(
            run=run.run_id, kind="volume-create", target=f"{spec.env}/{spec.name}", at=run.now()
        )
        tags = volume_tags(owner=run.desired.owner, env=spec.env, service=spec.name, op=op)
        request = VolumeRequest(size=spec.volume.size, zone=zone, tags=tags, op=op,
                                type=spec.volume.type)  # fmt: skip
        try:
            volume = port.create(request)
        except ReconcilerError as exc:
            run.ledger.mark_operation(op, state="failed", at=run.now(), detail=str(exc))
            raise
        run.ledger.mark_operation(op, state="done", at=run.now(), detail=volume.id)
        self._event("volume_created", spec, volume=volume.id, size=spec.volume.size,
                    type=spec.volume.type, zone=zone, provider=spec.provider,
                    price_per_gib_month=port.price_per_gib_month(spec.volume.type))  # fmt: skip
        self._wait(f"{volume.id} to be created", lambda: self._state(port, volume.id)
                   == "available")  # fmt: skip
        return volume

    def _snapshot(
        self, spec: ServiceSpec, port: VolumePort, volume: ObservedVolume, generation: int
    ) -> None:
        """Once per hand-over to `generation`: a redone hand-over (after a crash, even
        one that lost the answer) finds the snapshot by its tags and takes no second."""
        before = f"g{generation}"
        if any(tags.get(TAG_SNAPSHOT_FOR) == before for _id, tags in port.snapshots(volume.id)):
            return
        run = self.run
        op = run.ledger.begin_operation(run=run.run_id, kind="snapshot", target=volume.id,
                                        at=run.now())  # fmt: skip
        tags = {**volume_tags(owner=run.desired.owner, env=spec.env, service=spec.name, op=op),
                TAG_SNAPSHOT_FOR: before,
                "Name": f"{spec.env}-{spec.name}-before-g{generation}"}  # fmt: skip
        try:
            snapshot = port.snapshot(volume.id, tags)
        except ReconcilerError as exc:
            run.ledger.mark_operation(op, state="failed", at=run.now(), detail=str(exc))
            raise
        run.ledger.mark_operation(op, state="done", at=run.now(), detail=snapshot)
        self._event("snapshot_created", spec, generation=generation, volume=volume.id,
                    snapshot=snapshot, size=volume.size, provider=spec.provider,
                    price_per_gib_month=port.snapshot_price_per_gib_month())  # fmt: skip

    # ------------------------------------------------------------ helpers

    def instance_of(
        self, env: str, service: str, generation: int, *, alive_only: bool = True
    ) -> ObservedInstance | None:
        """The generation's instance: launched by this apply first, else as observed
        (alive, or with `alive_only` False also stopped), never one destroyed here."""
        run = self.run
        launched = run.launched.get((env, service, generation), [])
        candidates = [*launched, *[
            i for i in run.observed
            if (i.env, i.service, i.generation) == (env, service, generation)
            and (i.alive or (not alive_only and i.state.value == "stopped"))
        ]]  # fmt: skip
        return next((i for i in candidates if i.id not in run.destroyed), None)

    def _port(self, spec: ServiceSpec) -> VolumePort:
        port = self.run.providers[spec.provider].volumes()
        if port is None:
            raise RolloutFailed(f"provider {spec.provider} cannot hand volumes over")
        return port

    def _current(self, spec: ServiceSpec, port: VolumePort) -> ObservedVolume | None:
        """The service's volume as the cloud shows it now (observed at the pass's start,
        read again: an earlier step of this pass may have moved it)."""
        known = [
            v for v in self.run.volumes
            if (v.env, v.service) == (spec.env, spec.name)
            and v.tags.get(TAG_OWNER) == self.run.desired.owner
        ]  # fmt: skip
        if not known:
            # Not in the pass's listing: one this pass (or a killed one) just created.
            created = self.run.ledger.event_rows(
                kind="volume_created", env=spec.env, service=spec.name
            )
            known_ids = [str((e["detail"] or {}).get("volume")) for e in created]
        else:
            known_ids = [v.id for v in sorted(known, key=lambda v: (v.attached_to is None, v.id))]
        for volume_id in known_ids:
            fresh = port.describe(volume_id)
            if fresh is not None and fresh.state not in ("deleting", "deleted", "error"):
                return fresh
        return None

    def _attached_to(self, port: VolumePort, volume_id: str) -> str | None:
        fresh = port.describe(volume_id)
        if fresh is None or fresh.attachment in ("detaching", "detached"):
            return None
        return fresh.attached_to if fresh.attachment == "attached" else None

    def _state(self, port: VolumePort, volume_id: str) -> str | None:
        fresh = port.describe(volume_id)
        return fresh.state if fresh is not None else None

    def _step(self, spec: ServiceSpec, kind: str, target: str, call: Callable[[], None]) -> None:
        run = self.run
        run.check_stop()
        op = run.ledger.begin_operation(run=run.run_id, kind=kind, target=target, at=run.now())
        try:
            call()
        except ReconcilerError as exc:
            run.ledger.mark_operation(op, state="failed", at=run.now(), detail=str(exc))
            raise
        run.ledger.mark_operation(op, state="done", at=run.now())

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.run.desired.policy.boot_timeout
        while not done():
            self.run.check_stop()
            if time.monotonic() >= deadline:
                raise RolloutFailed(f"timed out waiting for {what}")
            self.sleep(POLL_SECONDS)

    def _event(self, kind: str, spec: ServiceSpec, *, instance: str | None = None,
               generation: int | None = None, **detail: object) -> None:  # fmt: skip
        run = self.run
        run.ledger.record_event(
            kind=kind, at=run.now(), run=run.run_id, env=spec.env, service=spec.name,
            generation=generation, instance=instance, detail=detail,
        )  # fmt: skip

