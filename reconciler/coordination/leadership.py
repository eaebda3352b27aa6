"""Leadership of one member: campaign, keep the lease alive, and fence every mutation.

Owns: the member's role (leader or follower), its epoch, and the local monotonic
deadline after which it must not act: the last confirmed keep-alive (timed from when
the request was *sent*) plus the TTL minus a safety margin. `check` is the `Fence`
the engine and the ledger call before every mutation; a leader past its deadline, or
whose keep-alive failed or found the key in other hands, steps down at once and
says so in its log. Must not: act on the cloud or the ledger itself, or trust a
wall clock (a paused process wakes to a monotonic clock that kept counting).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

import structlog

from reconciler.errors import NotLeader, RetryLater

log = structlog.get_logger(__name__)

STATUS_FILE: Final = "coordination.json"
MARGIN_FRACTION: Final = 0.2  # of the TTL: clock-rate differences, the call in flight
KEEPALIVE_FRACTION: Final = 0.25  # keep-alive every TTL/4: three may fail before the margin


class Election(Protocol):
    def campaign(self, member: str, ttl: int) -> Holding | None: ...
    def keep_alive(self, lease: int) -> int: ...
    def holder(self) -> Holding | None: ...
    def resign(self, lease: int) -> None: ...


class Holding(Protocol):
    @property
    def member(self) -> str: ...
    @property
    def epoch(self) -> int: ...
    @property
    def lease(self) -> int: ...


@dataclass(frozen=True)
class Snapshot:
    role: str  # "leader" or "follower"
    member: str
    epoch: int | None  # ours when leading, else the leader's we saw
    leader: str | None
    lease_expires_in: float | None  # seconds until our fence closes (leader only)
    since: str  # when this role began (ISO 8601, UTC)
    why: str


class Leadership:
    """The `Fence` of a member under `--coordination`."""

    def __init__(
        self,
        election: Election,
        *,
        member: str,
        ttl: int,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep_in_background: bool = True,
    ) -> None:
        self.election = election
        # Tests drive `renew_once` themselves, with a clock of their own.
        self.keep_in_background = keep_in_background
        self.member = member
        self.ttl = ttl
        self.margin = max(ttl * MARGIN_FRACTION, 0.5)
        self.state_dir = state_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._holding: Holding | None = None
        self._deadline = float("-inf")
        self._seen: Holding | None = None
        self.previous: str | None = None  # the leader seen before this member took over
        self._since = datetime.now(UTC)
        self._why = "started"
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()
        self._last_beat = clock()
        # How far the ledger's replica trails (set by the daemon when it has one).
        self.replica_lag: Callable[[], float | None] = lambda: None
        self._write_status()

    # ------------------------------------------------------------ the fence

    @property
    def epoch(self) -> int | None:
        holding = self._holding
        return holding.epoch if holding is not None else None

    def check(self, action: str) -> None:
        """Return while we lead and our deadline is ahead; else step down and raise."""
        with self._lock:
            if self._holding is None:
                raise NotLeader(f"{self.member} is not the leader: {action} not done")
            if self._clock() >= self._deadline:
                self._step_down_locked("the lease could not be confirmed in time")
                raise NotLeader(
                    f"{self.member} stepped down (lease not confirmed in time): {action} not done"
                )

    def is_leader(self) -> bool:
        try:
            self.check("leading")
        except NotLeader:
            return False
        return True

    # ------------------------------------------------------------ campaigning

    def try_acquire(self) -> bool:
        """One campaign: lead if nobody does. Never raises for an unreachable etcd."""
        if self.is_leader():
            return True
        sent = self._clock()
        try:
            won = self.election.campaign(self.member, self.ttl)
            seen = won or self.election.holder()
        except RetryLater as exc:
            log.warning("coordination_unavailable", member=self.member, error=str(exc))
            return False
        with self._lock:
            if won is not None and self._seen is not None and self._seen.member != self.member:
                self.previous = self._seen.member
            self._seen = seen
            if won is None:
                self._write_status()
                return False
            self._holding = won
            self._deadline = sent + self.ttl - self.margin
            self._became("leader", f"took the leader key (epoch {won.epoch})")
        log.info("leader_elected", member=self.member, epoch=won.epoch, ttl=self.ttl)
        if self.keep_in_background:
            self._start_keeper()
        return True

    def resign(self) -> None:
        """Give the key up (on a clean stop) so a follower takes over at once."""
        self._stop_keeper.set()
        with self._lock:
            holding = self._holding
            if holding is None:
                return
            self._step_down_locked("resigned on stop")
        try:
            self.election.resign(holding.lease)
        except RetryLater as exc:
            log.warning("resign_failed", member=self.member, error=str(exc))

    def leader_seen(self) -> Holding | None:
        """The holder of the key at the last look (followers poll it with try_acquire)."""
        return self._holding or self._seen

    # ------------------------------------------------------------ keeping the lease

    def beat(self) -> None:
        """The main loop is alive (called from every watchdog beat). The lease is renewed
        only while it beats: a wedged loop must lose the lease, not keep it forever."""
        self._last_beat = self._clock()

    def _start_keeper(self) -> None:
        self._stop_keeper = threading.Event()
        self._keeper = threading.Thread(
            target=self._keep, args=(self._stop_keeper,), name="lease-keeper", daemon=True
        )
        self._keeper.start()

    def _keep(self, stop: threading.Event) -> None:
        interval = max(self.ttl * KEEPALIVE_FRACTION, 0.2)
        while not stop.wait(interval):
            if not self.renew_once():
                return

    def renew_once(self) -> bool:
        """One keep-alive (the keeper thread calls it every TTL/4). False once this
        member no longer leads; a renewal that cannot be confirmed leaves the deadline
        where it was, to run out on its own."""
        with self._lock:
            holding = self._holding
        if holding is None:
            return False
        sent = self._clock()
        if sent - self._last_beat > self.ttl - self.margin:
            log.warning("lease_not_renewed", member=self.member,
                        why="the main loop has not beaten within the lease")  # fmt: skip
            return True
        try:
            remaining = self.election.keep_alive(holding.lease)
            current = self.election.holder() if remaining > 0 else None
        except RetryLater as exc:
            log.warning("lease_keepalive_failed", member=self.member, error=str(exc))
            return True
        with self._lock:
            if self._holding is not holding:
                return False
            if remaining <= 0:
                self._step_down_locked("the lease expired (etcd no longer knows it)")
                return False
            if current is None or current.epoch != holding.epoch:
                self._step_down_locked("the leader key is no longer ours")
                return False
            self._deadline = sent + min(remaining, self.ttl) - self.margin
            self._write_status()
        return True

    def _step_down_locked(self, why: str) -> None:
        epoch = self.epoch
        self._holding = None
        self._deadline = float("-inf")
        self._stop_keeper.set()
        self._became("follower", why)
        log.warning("leader_stepped_down", member=self.member, epoch=epoch, why=why)

    def _became(self, role: str, why: str) -> None:
        self._since = datetime.now(UTC)
        self._why = why
        self._write_status()

    # ------------------------------------------------------------ what others see

    def snapshot(self) -> Snapshot:
        holding = self._holding
        seen = holding or self._seen
        left = self._deadline - self._clock() if holding is not None else None
        return Snapshot(
            role="leader" if holding is not None else "follower",
            member=self.member,
            epoch=seen.epoch if seen is not None else None,
            leader=seen.member if seen is not None else None,
            lease_expires_in=max(left, 0.0) if left is not None else None,
            since=self._since.isoformat(),
            why=self._why,
        )

    def _write_status(self) -> None:
        """`coordination.json` in the state directory, for `status` (not the ledger:
        a follower writes none)."""
        if self.state_dir is None:
            return
        snap = self.snapshot()
        document = {
            **snap.__dict__,
            "lease_expires_at": (
                (datetime.now(UTC) + timedelta(seconds=snap.lease_expires_in)).isoformat()
                if snap.lease_expires_in is not None
                else None
            ),
            "replica_lag_seconds": self.replica_lag() if snap.role == "leader" else None,
            "ttl": self.ttl,
            "written_at": datetime.now(UTC).isoformat(),
        }
        target = self.state_dir / STATUS_FILE
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(temporary, target)


def read_status(state_dir: Path) -> dict[str, object] | None:
    """What the daemon last wrote to `coordination.json`, or None without coordination."""
    try:
        loaded = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
