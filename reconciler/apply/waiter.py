"""The shared boot waiter: one listing per provider per poll, for every pending instance.

Owns: waiting until freshly launched instances run, for all service groups of one
apply at once. Each (provider) has a board of the instances its waiters wait for: the
first waiter whose poll is due asks the provider for all of them (`look_up`: the new
instances alone, not the fleet, which a cloud takes far longer to describe); every
other waiter of that provider takes its answer from that same listing instead of
making its own. N services waiting therefore cost one DescribeInstances per poll, not
N. Thread-safe: service groups call `wait_running` from the applier's worker threads.

Must not: decide what a failed boot means for the rollout (the applier compensates),
retry API calls (the adapter does), or keep instances between applies (one waiter
per apply: a listing is only trusted within the pass that made it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from reconciler.errors import BootFailed, ObservationIncomplete
from reconciler.model import InstanceState, ObservedInstance
from reconciler.providers import ComputeProvider

log = structlog.get_logger(__name__)

DEFAULT_CAP = 5.0  # seconds between two looks at most, where the adapter says nothing


@dataclass
class _Board:
    """One provider's latest listing, and who is fetching the next one."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    started: int = 0  # listings begun so far; a listing's sequence number
    finished: int = 0  # sequence number of the latest finished listing
    listing: Mapping[str, ObservedInstance] = field(default_factory=dict)
    error: ObservationIncomplete | None = None
    polling: bool = False
    last_start: float = 0.0  # clock() when the latest listing began
    # The instances its waiters wait for (each is one launch's, so one waiter's):
    # what the next listing asks for.
    wanted: set[str] = field(default_factory=set)
    # Batches whose launches are under way (tickets of `launching`), not yet waiting.
    launching: set[int] = field(default_factory=set)
    tickets: int = 0


@dataclass
class BootWaiter:
    """Waits for instances to run; one instance of it is shared by a whole apply."""

    owner: str
    # The first wait after a look that did not see every instance run, and the closest
    # two listings of one provider ever come; each further wait doubles, up to the
    # provider's `boot_poll_cap` (else `cap`): a fast cloud is seen at once, a slow one
    # is not asked once a second for minutes.
    interval: float = 0.25
    cap: float = DEFAULT_CAP
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    listings: int = 0  # listings made, for tests and progress lines
    _boards: dict[str, _Board] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _board(self, provider: str) -> _Board:
        with self._lock:
            return self._boards.setdefault(provider, _Board())

    @contextmanager
    def launching(self, provider: str) -> Iterator[int]:
        """Around one batch's launches and its `wait_running(..., ticket=)`. A listing
        that falls due meanwhile waits (one interval at most) for the batch to start
        waiting, so one listing sees a wave of batches launched together instead of
        each batch needing the next listing."""
        board = self._board(provider)
        with board.cond:
            board.tickets += 1
            ticket = board.tickets
            board.launching.add(ticket)
        try:
            yield ticket
        finally:
            with board.cond:
                if ticket in board.launching:  # the batch failed before it waited
                    board.launching.discard(ticket)
                    board.cond.notify_all()

    def wait_running(
        self,
        instances: Sequence[ObservedInstance],
        provider: ComputeProvider,
        *,
        timeout: float,
        check_stop: Callable[[], None] = lambda: None,
        ticket: int | None = None,
    ) -> list[ObservedInstance]:
        """The instances as listed once all run; raises BootFailed if one dies or the
        `timeout` passes. `check_stop` is called between polls (it may raise);
        `ticket` is the batch's from `launching`."""
        wanted = {i.id for i in instances}
        board = self._board(provider.name)
        with board.cond:
            # Only a listing begun after our launches can be trusted to show them, and
            # every listing begun from now on asks for them.
            seen = board.started
            board.wanted |= wanted
            if ticket in board.launching:
                board.launching.discard(ticket)
                board.cond.notify_all()
        if not wanted:
            return []
        try:
            return self._poll(wanted, board, provider, timeout=timeout, check_stop=check_stop,
                              seen=seen)  # fmt: skip
        finally:
            with board.cond:
                board.wanted -= wanted

    def _poll(
        self,
        wanted: set[str],
        board: _Board,
        provider: ComputeProvider,
        *,
        timeout: float,
        check_stop: Callable[[], None],
        seen: int,
    ) -> list[ObservedInstance]:
        delay = self.interval
        cap = max(self.interval, float(getattr(provider, "boot_poll_cap", None) or self.cap))
        deadline = self.clock() + timeout
        while True:
            check_stop()
            listing, error, seen = self._next_listing(board, provider, after=seen)
            if error is not None:
                # A listing that failed says nothing about the new instances: keep waiting.
                log.warning("boot_wait_listing_failed", provider=provider.name, error=str(error))
                if self.clock() >= deadline:
                    raise BootFailed(f"could not see the new instances boot: {error}")
                self.sleep(delay)
                delay = min(delay * 2, cap)
                continue
            current = [listing[i] for i in sorted(wanted) if i in listing]
            running = [i for i in current if i.state is InstanceState.RUNNING]
            if len(running) == len(wanted):
                return running
            dead = [i.id for i in current if not i.alive]
            if dead:
                raise BootFailed(f"instances stopped or terminated while booting: {dead}")
            if self.clock() >= deadline:
                raise BootFailed(
                    f"{len(wanted) - len(running)} instance(s) not running after {timeout:.0f}s"
                )
            self.sleep(delay)
            delay = min(delay * 2, cap)

    def _next_listing(
        self, board: _Board, provider: ComputeProvider, *, after: int
    ) -> tuple[Mapping[str, ObservedInstance], ObservationIncomplete | None, int]:
        """A listing begun after sequence `after`: made by this thread if none is under
        way, else the one another thread is making. Returns it with its sequence."""
        with board.cond:
            while True:
                if board.finished > after:
                    return board.listing, board.error, board.finished
                if not board.polling:
                    # At most one listing per interval: a group that arrives just after
                    # a listing began joins the next one instead of starting its own.
                    due = board.last_start + self.interval - self.clock()
                    if board.started and due > 0:
                        board.cond.wait(timeout=due)
                        continue
                    board.polling = True
                    # A wave: batches still launching when this listing fell due are
                    # waited for (one interval at most), then asked for with ours.
                    wave = set(board.launching)
                    until = self.clock() + self.interval
                    while wave & board.launching and (left := until - self.clock()) > 0:
                        board.cond.wait(timeout=left)
                    board.last_start = self.clock()
                    board.started += 1
                    sequence = board.started
                    asked = set(board.wanted)
                    break
                # Bounded wait: the poller notifies, the timeout only guards a lost wake-up.
                board.cond.wait(timeout=max(self.interval, 0.05))
        listing: dict[str, ObservedInstance] = {}
        error: ObservationIncomplete | None = None
        try:
            listing = {i.id: i for i in provider.look_up(self.owner, asked)}
        except ObservationIncomplete as exc:
            error = exc
        finally:
            with board.cond:
                board.polling = False
                board.listing, board.error, board.finished = listing, error, sequence
                board.cond.notify_all()
            with self._lock:
                self.listings += 1
        return listing, error, sequence
