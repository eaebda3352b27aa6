"""What the ledger's events say holds a service: rollback pins, guard freezes, services
that went down, and the replacements the thrash detector counts.

Owns: reading those states from the append-only events (the newest event of each pair
wins: pinned/released, frozen/unfrozen, service_down/service_up). Must not: decide
anything (the planner and the guards do) or write, except marking a pin released when
its spec changed (asked for with `release_stale`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.ledger.store import Ledger
from reconciler.model import DesiredState, Freeze, Pin

ServiceKey = tuple[str, str]


def events_in_order(ledger: Ledger, *kinds: str) -> list[dict[str, Any]]:
    rows = [row for kind in kinds for row in ledger.event_rows(kind=kind)]
    return sorted(rows, key=lambda row: (row["at"], row["id"]))


def current_pins(
    ledger: Ledger, desired: DesiredState, *, release_stale: bool = False
) -> dict[tuple[str, str], Pin]:
    """Services pinned by `rollback` and not released. A pin lapses when a commit
    changes the service's spec (its fingerprint differs from the one pinned against)."""
    pins: dict[tuple[str, str], Pin] = {}
    for event in events_in_order(ledger, "pinned", "released"):
        if not event["env"]:
            continue
        key = (event["env"], event["service"])
        if event["kind"] == "released":
            pins.pop(key, None)
        else:
            detail = event["detail"] or {}
            pins[key] = Pin(
                env=key[0], service=key[1], generation=int(event["generation"]),
                fingerprint=str(detail.get("fingerprint", "")),
                since=datetime.fromisoformat(event["at"]),
            )  # fmt: skip
    for key, pin in list(pins.items()):
        spec = desired.service(*key)
        if spec is None or spec.fingerprint != pin.fingerprint:
            del pins[key]
            if release_stale:
                ledger.record_event(
                    kind="released", at=datetime.now(UTC), env=key[0], service=key[1],
                    generation=pin.generation, detail={"why": "the desired spec changed"},
                )  # fmt: skip
    return pins


def current_freezes(ledger: Ledger, desired: DesiredState) -> dict[tuple[str, str], Freeze]:
    """Services a guard froze, with why and since when; a freeze lasts until
    `unfreeze` or a new commit."""
    freezes: dict[tuple[str, str], Freeze] = {}
    for event in events_in_order(ledger, "frozen", "unfrozen"):
        key = (event["env"], event["service"])
        if event["kind"] == "unfrozen":
            freezes.pop(key, None)
            continue
        detail = event["detail"] or {}
        if detail.get("commit") == desired.commit:
            since = datetime.fromisoformat(event["at"])
            freezes[key] = Freeze(str(detail.get("why", "guard")), since)
        else:
            freezes.pop(key, None)  # the desired state moved on since
    return freezes


def services_down(ledger: Ledger) -> dict[tuple[str, str], datetime]:
    """Services whose newest down/up event says down, with when they went down."""
    down: dict[tuple[str, str], datetime] = {}
    for event in events_in_order(ledger, "service_down", "service_up"):
        key = (event["env"], event["service"])
        if event["kind"] == "service_down":
            down[key] = datetime.fromisoformat(event["at"])
        else:
            down.pop(key, None)
    return down


def recent_replacements(
    ledger: Ledger, keys: Iterable[ServiceKey], *, now: datetime, window_seconds: float
) -> dict[ServiceKey, int]:
    """Per service, the instances replaced within the window; counting restarts after
    a freeze or an unfreeze (the operator has looked)."""
    keys = list(keys)
    if not keys:
        return {}
    window_start = now - timedelta(seconds=window_seconds)
    resets: dict[ServiceKey, datetime] = {}
    for event in events_in_order(ledger, "frozen", "unfrozen"):
        resets[(event["env"], event["service"])] = datetime.fromisoformat(event["at"])
    counts: dict[ServiceKey, int] = {}
    for key in keys:
        since = max(window_start, resets.get(key, window_start))
        rows = ledger.event_rows(kind="instance_replaced", env=key[0], service=key[1], since=since)
        counts[key] = len(rows)
    return counts
