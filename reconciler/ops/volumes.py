"""`reconciler volume delete`: the only way a data volume is deleted.

Owns: finding the service's volume, refusing while it is attached or while the desired
state still declares it, deleting it (an operation row before the call), and the
`volume_deleted` event with who asked. Must not: run without the state lock (the CLI
holds it), or touch snapshots (kept; `ledger orphans` lists those of deleted volumes).
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from reconciler import engine
from reconciler.errors import NothingToDo, ReconcilerError
from reconciler.ledger import Ledger
from reconciler.model import DesiredState, ObservedVolume
from reconciler.providers import ComputeProvider

log = structlog.get_logger(__name__)


def delete_volume(desired: DesiredState, ledger: Ledger, env: str, service: str, *, by: str) -> str:
    spec = desired.service(env, service)
    if spec is not None and spec.volume is not None:
        raise NothingToDo(
            f"{env}/{service} still declares its volume in the desired state: remove "
            "`volume:` (or the service) and let a pass apply it first"
        )
    providers = engine.build_providers(desired, fence=ledger.fence)
    found = _volumes(desired, providers, env, service)
    if not found:
        raise NothingToDo(f"{env}/{service} has no data volume")
    attached = [v for v in found if v.attached_to is not None]
    if attached:
        volume = attached[0]
        raise NothingToDo(
            f"volume {volume.id} of {env}/{service} is attached to {volume.attached_to}; "
            "a volume is deleted only once nothing holds it"
        )
    deleted: list[str] = []
    for volume in found:
        port = providers[volume.provider].volumes()
        assert port is not None
        now = datetime.now(UTC)
        run = ledger.start_run(command="volume delete", commit=desired.commit)
        op = ledger.begin_operation(run=run, kind="volume-delete", target=volume.id, at=now)
        try:
            port.delete(volume.id)
        except ReconcilerError as exc:
            ledger.mark_operation(op, state="failed", at=datetime.now(UTC), detail=str(exc))
            ledger.finish_run(run, result="failed", counts={}, error=str(exc))
            raise
        ledger.mark_operation(op, state="done", at=datetime.now(UTC))
        ledger.finish_run(run, result="changes", counts={"volume-delete": 1})
        ledger.record_event(
            kind="volume_deleted", at=datetime.now(UTC), run=run, env=env, service=service,
            detail={"volume": volume.id, "size": volume.size, "by": by},
        )  # fmt: skip
        log.warning("volume_deleted", env=env, service=service, volume=volume.id, by=by)
        deleted.append(volume.id)
    return f"{env}/{service}: deleted volume {', '.join(deleted)} (its snapshots are kept)"


def _volumes(
    desired: DesiredState, providers: dict[str, ComputeProvider], env: str, service: str
) -> list[ObservedVolume]:
    found: list[ObservedVolume] = []
    for name in sorted(providers):
        port = providers[name].volumes()
        if port is None:
            continue
        found += [v for v in port.list_owned(desired.owner)
                  if (v.env, v.service) == (env, service)
                  and v.state not in ("deleting", "deleted")]  # fmt: skip
    return found
