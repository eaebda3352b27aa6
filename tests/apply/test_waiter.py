"""The shared boot waiter: many service groups, one listing per provider per poll.

A fake provider counts listings and turns instances running after a fixed number of
them; no timing is asserted, only counts and outcomes.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from reconciler.apply.waiter import BootWaiter
from reconciler.errors import BootFailed, ObservationIncomplete
from reconciler.model import InstanceState, ObservedInstance


def _instance(instance_id: str, state: InstanceState, provider: str = "cloud") -> ObservedInstance:
    return ObservedInstance(
        id=instance_id,
        provider=provider,
        state=state,
        image="ami-1",
        size="t3.micro",
        env="prod",
        service="web",
        generation=1,
    )


class FakeProvider:
    """Instances are pending until the `running_from`-th listing; listings are counted."""

    def __init__(self, name: str, ids: Sequence[str], *, running_from: int = 3) -> None:
        self.name = name
        self.ids = list(ids)
        self.running_from = running_from
        self.listings = 0
        self.fail_first = 0
        self.dead: set[str] = set()
        self.asked: list[set[str]] = []  # the ids each listing asked for
        self._lock = threading.Lock()

    def look_up(self, owner: str, ids: Collection[str]) -> list[ObservedInstance]:
        with self._lock:
            self.listings += 1
            self.asked.append(set(ids))
            n = self.listings
        if n <= self.fail_first:
            raise ObservationIncomplete("listing failed")
        state = InstanceState.RUNNING if n >= self.running_from else InstanceState.PENDING
        return [
            _instance(i, InstanceState.GONE if i in self.dead else state, self.name)
            for i in self.ids
            if i in ids
        ]


def _waiter() -> BootWaiter:
    # Interval 0 (no spacing) and no sleeping: the count of listings is what is tested.
    return BootWaiter("acme", interval=0.0, sleep=lambda _s: None)


def test_twenty_groups_waiting_share_listings() -> None:
    groups = 20
    ids = [f"i-{n:04d}" for n in range(groups * 2)]
    provider = FakeProvider("cloud", ids, running_from=3)
    waiter = _waiter()
    # Every group registers before the first listing starts: the bound is then exact.
    ready = threading.Barrier(groups)
    first_call: set[int] = set()

    def check_stop() -> None:
        me = threading.get_ident()
        if me not in first_call:
            first_call.add(me)
            ready.wait(timeout=30)

    def wait(n: int) -> list[ObservedInstance]:
        mine = [_instance(i, InstanceState.PENDING) for i in ids[2 * n : 2 * n + 2]]
        return waiter.wait_running(mine, provider, timeout=60, check_stop=check_stop)

    with ThreadPoolExecutor(max_workers=groups) as pool:
        results = list(pool.map(wait, range(groups)))
    assert all(len(r) == 2 and all(i.state is InstanceState.RUNNING for i in r) for r in results)
    # Three listings served all twenty groups (one per group per poll would be 60),
    # each asking for every waiting instance and nothing else.
    assert provider.listings == 3
    assert waiter.listings == 3
    assert provider.asked == [set(ids)] * 3


def test_a_listing_asks_only_for_the_instances_still_waited_for() -> None:
    """A group whose instances run, or whose wait failed, drops out of the next listing;
    a group that starts waiting later is in it."""
    provider = FakeProvider("cloud", ["i-0", "i-1", "i-2", "i-3"], running_from=1)
    provider.dead.add("i-0")
    waiter = _waiter()
    with pytest.raises(BootFailed):
        waiter.wait_running([_instance("i-0", InstanceState.PENDING)], provider, timeout=60)
    waiter.wait_running([_instance("i-1", InstanceState.PENDING)], provider, timeout=60)
    waiter.wait_running(
        [_instance(i, InstanceState.PENDING) for i in ("i-2", "i-3")], provider, timeout=60
    )
    assert provider.asked == [{"i-0"}, {"i-1"}, {"i-2", "i-3"}]


def test_each_provider_has_its_own_listing() -> None:
    east, west = (
        FakeProvider("east", ["i-e"], running_from=1),
        FakeProvider("west", ["i-w"], running_from=2),
    )
    waiter = _waiter()
    assert [
        i.id
        for i in waiter.wait_running([_instance("i-e", InstanceState.PENDING)], east, timeout=60)
    ] == ["i-e"]
    assert [
        i.id
        for i in waiter.wait_running([_instance("i-w", InstanceState.PENDING)], west, timeout=60)
    ] == ["i-w"]
    assert (east.listings, west.listings) == (1, 2)


def test_a_failed_listing_is_waited_out() -> None:
    provider = FakeProvider("cloud", ["i-1"], running_from=1)
    provider.fail_first = 2
    running = _waiter().wait_running(
        [_instance("i-1", InstanceState.PENDING)], provider, timeout=60
    )
    assert [i.id for i in running] == ["i-1"]
    assert provider.listings == 3


def test_an_instance_that_dies_while_booting_fails_the_wait() -> None:
    provider = FakeProvider("cloud", ["i-1", "i-2"], running_from=5)
    provider.dead.add("i-2")
    with pytest.raises(BootFailed, match="i-2"):
        _waiter().wait_running(
            [_instance(i, InstanceState.PENDING) for i in ("i-1", "i-2")], provider, timeout=60
        )
    assert provider.listings == 1


def test_the_deadline_ends_the_wait() -> None:
    ticks = iter(range(10_000))
    provider = FakeProvider("cloud", ["i-1"], running_from=10_000)
    waiter = BootWaiter(
        "acme", interval=0.0, sleep=lambda _s: None, clock=lambda: float(next(ticks))
    )
    with pytest.raises(BootFailed, match="not running after 5s"):
        waiter.wait_running([_instance("i-1", InstanceState.PENDING)], provider, timeout=5)
    assert provider.listings < 10


def test_a_stop_request_is_honoured_between_polls() -> None:
    class Stop(Exception):
        pass

    def check_stop() -> None:
        raise Stop

    provider = FakeProvider("cloud", ["i-1"], running_from=10)
    with pytest.raises(Stop):
        _waiter().wait_running(
            [_instance("i-1", InstanceState.PENDING)], provider, timeout=60, check_stop=check_stop
        )
    assert provider.listings == 0


def test_the_first_look_is_at_once_then_the_waits_double_up_to_the_providers_cap() -> None:
    """Booted instances are seen by the listing made right after the launches; a slow
    boot is looked at after 0.25 s, 0.5 s, 1 s, 2 s, ... never more apart than the cap."""
    quick = FakeProvider("east", ["i-1"], running_from=1)
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    waiter = BootWaiter("acme", interval=0.25, sleep=sleep, clock=lambda: now[0])
    assert [i.id for i in waiter.wait_running([_instance("i-1", InstanceState.PENDING, "east")],
                                              quick, timeout=600)] == ["i-1"]  # fmt: skip
    assert (quick.listings, slept) == (1, [])

    slow = FakeProvider("west", ["i-2"], running_from=8)
    slow.boot_poll_cap = 3.0  # type: ignore[attr-defined]
    waiter.wait_running([_instance("i-2", InstanceState.PENDING, "west")], slow, timeout=600)
    assert slow.listings == 8
    assert slept == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_listing_waits_for_a_batch_still_launching_so_one_listing_serves_the_wave() -> None:
    """Group A waits while group B's launches are still under way: A's listing waits for
    B to start waiting (one interval at most) and asks for both, instead of B needing
    a listing of its own a spacing later."""
    provider = FakeProvider("cloud", ["i-a", "i-b"], running_from=1)
    waiter = BootWaiter("acme", interval=30.0, sleep=lambda _s: None)
    with waiter.launching("cloud") as b_ticket, ThreadPoolExecutor(max_workers=1) as pool:
        with waiter.launching("cloud") as a_ticket:
            a = pool.submit(waiter.wait_running, [_instance("i-a", InstanceState.PENDING)],
                            provider, timeout=60, ticket=a_ticket)  # fmt: skip
            board = waiter._board("cloud")
            while not board.polling:  # A has reserved the next listing and waits for B
                threading.Event().wait(0.01)
        assert provider.listings == 0
        b = waiter.wait_running(
            [_instance("i-b", InstanceState.PENDING)], provider, timeout=60, ticket=b_ticket
        )
        assert [i.id for i in a.result(timeout=30)] == ["i-a"] and [i.id for i in b] == ["i-b"]
    assert provider.asked == [{"i-a", "i-b"}]


def test_a_batch_that_fails_to_launch_does_not_hold_the_listing_up() -> None:
    provider = FakeProvider("cloud", ["i-a"], running_from=1)
    waiter = BootWaiter("acme", interval=30.0, sleep=lambda _s: None)
    with pytest.raises(RuntimeError), waiter.launching("cloud"):
        raise RuntimeError("the launch failed")
    assert not waiter._board("cloud").launching  # nothing for a listing to wait for
    with waiter.launching("cloud") as ticket:
        running = waiter.wait_running(
            [_instance("i-a", InstanceState.PENDING)], provider, timeout=60, ticket=ticket
        )
    assert [i.id for i in running] == ["i-a"] and provider.listings == 1
