"""The fence on our side (issue 16): the leader's deadline, its step-down, and what a
closed fence refuses. The election is a recording fake at our own seam (the real etcd
is in test_two_hosts.py); the clock is a number the test moves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.coordination.leadership import Leadership, read_status
from reconciler.errors import NotLeader, TransientError
from reconciler.fencing import OPEN
from reconciler.ledger import Ledger
from reconciler.model import InstanceState, ObservedInstance
from reconciler.providers.base import TAG_EPOCH, LaunchRequest
from reconciler.providers.fenced import FencedProvider

TTL = 10


@dataclass(frozen=True)
class Held:
    member: str
    epoch: int
    lease: int


@dataclass
class FakeElection:
    """etcd's answers, scripted: who holds the key, what a keep-alive returns."""

    holding: Held | None = None
    keepalive_ttl: int = TTL
    unreachable: bool = False
    calls: list[str] = field(default_factory=list)
    revision: int = 100
    leases: set[int] = field(default_factory=set)  # alive in "etcd"

    def campaign(self, member: str, ttl: int) -> Held | None:
        self._call("campaign")
        if self.holding is not None:
            return None
        self.revision += 1
        self.holding = Held(member, self.revision, lease=self.revision * 10)
        self.leases.add(self.holding.lease)
        return self.holding

    def keep_alive(self, lease: int) -> int:
        self._call("keep_alive")
        return self.keepalive_ttl if lease in self.leases else -1

    def holder(self) -> Held | None:
        self._call("holder")
        return self.holding

    def resign(self, lease: int) -> None:
        self._call("resign")
        self.leases.discard(lease)
        if self.holding is not None and self.holding.lease == lease:
            self.holding = None

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.unreachable:
            raise TransientError(f"etcd {what}: no endpoint answered")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def member(election: FakeElection, clock: Clock, name: str = "alpha", **kw: object) -> Leadership:
    return Leadership(election, member=name, ttl=TTL, clock=clock, keep_in_background=False,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def test_the_fence_closes_at_the_confirmed_time_plus_ttl_minus_the_margin() -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    assert alpha.try_acquire() and alpha.epoch == 101
    deadline = 1000.0 + TTL - alpha.margin
    clock.now = deadline - 0.01
    alpha.check("create web-1")  # still inside
    clock.now = deadline
    with pytest.raises(NotLeader, match="stepped down"):
        alpha.check("create web-1")
    assert not alpha.is_leader() and alpha.epoch is None
    assert alpha.snapshot().role == "follower"


def test_a_confirmed_keepalive_moves_the_deadline_from_when_it_was_sent() -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    alpha.try_acquire()
    clock.now += 3
    alpha.beat()
    assert alpha.renew_once()
    clock.now = 1003 + TTL - alpha.margin - 0.01
    alpha.check("destroy i-1")
    clock.now += 0.02
    with pytest.raises(NotLeader):
        alpha.check("destroy i-1")


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ({"keepalive_ttl": -1}, "the lease expired"),
        ({"holding": Held("beta", 555, 5550)}, "no longer ours"),
    ],
)
def test_a_keepalive_that_finds_the_lease_gone_steps_down_at_once(
    script: dict[str, object], why: str
) -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    alpha.try_acquire()
    for key, value in script.items():
        setattr(election, key, value)
    alpha.beat()
    assert not alpha.renew_once()
    with pytest.raises(NotLeader):
        alpha.check("switch traffic")  # long before the deadline: stepped down already
    assert why in alpha.snapshot().why


def test_an_unreachable_etcd_leaves_the_deadline_to_run_out() -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    alpha.try_acquire()
    election.unreachable = True
    clock.now += 4
    alpha.beat()
    assert alpha.renew_once()  # still leading, but not renewed
    clock.now = 1000 + TTL - alpha.margin
    with pytest.raises(NotLeader):
        alpha.check("ledger record_event")


def test_a_silent_main_loop_is_not_renewed() -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    alpha.try_acquire()
    clock.now += TTL  # no beat for a whole lease
    assert alpha.renew_once()
    assert "keep_alive" not in election.calls
    with pytest.raises(NotLeader):
        alpha.check("create web-1")


def test_a_follower_sees_the_leader_and_remembers_it_when_it_takes_over(tmp_path: Path) -> None:
    election, clock = FakeElection(), Clock()
    beta = member(election, clock, "beta")
    alpha = member(election, clock, "alpha", state_dir=tmp_path)
    assert beta.try_acquire()
    assert not alpha.try_acquire()
    status = read_status(tmp_path)
    assert status is not None
    assert (status["role"], status["leader"], status["epoch"]) == ("follower", "beta", 101)
    with pytest.raises(NotLeader, match="not the leader"):
        alpha.check("create web-1")
    beta.resign()
    assert alpha.try_acquire()
    assert alpha.previous == "beta" and alpha.epoch == 102
    assert read_status(tmp_path)["role"] == "leader"  # type: ignore[index]


def test_an_unreachable_etcd_at_campaign_time_is_following_not_a_crash() -> None:
    election, clock = FakeElection(unreachable=True), Clock()
    alpha = member(election, clock)
    assert not alpha.try_acquire()
    assert alpha.snapshot().role == "follower"


class RecordingProvider:
    name = "cloud"

    def __init__(self) -> None:
        self.created: list[LaunchRequest] = []
        self.destroyed: list[str] = []

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        self.created.append(request)
        return ObservedInstance(id="i-1", provider="cloud", state=InstanceState.PENDING,
                                image=request.image, size=request.size,
                                tags=dict(request.tags))  # fmt: skip

    def destroy_instance(self, instance_id: str) -> None:
        self.destroyed.append(instance_id)

    def load_balancers(self) -> None:
        return None


def test_a_closed_fence_sends_nothing_and_an_open_one_stamps_the_epoch() -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    alpha.try_acquire()
    inner = RecordingProvider()
    fenced = FencedProvider(inner, alpha)  # type: ignore[arg-type]
    request = LaunchRequest(name="prod-web-g1-1", image="ami-1", size="t3.micro",
                            tags={"reconciler:owner": "acme"}, op="op1")  # fmt: skip
    fenced.create_instance(request)
    assert inner.created[0].tags[TAG_EPOCH] == "101"
    clock.now += TTL
    with pytest.raises(NotLeader):
        fenced.create_instance(request)
    with pytest.raises(NotLeader):
        fenced.destroy_instance("i-1")
    assert len(inner.created) == 1 and inner.destroyed == []


def test_the_ledger_refuses_writes_behind_a_closed_fence_and_stamps_intents(
    tmp_path: Path,
) -> None:
    election, clock = FakeElection(), Clock()
    alpha = member(election, clock)
    alpha.try_acquire()
    now = datetime.now(UTC)
    with Ledger.open(tmp_path) as ledger:
        ledger.fence = alpha
        run = ledger.start_run(command="daemon", commit=None)
        op = ledger.begin_operation(run=run, kind="create", target="prod/web", at=now)
        assert [row["epoch"] for row in ledger.open_operations() if row["id"] == op] == [101]
        clock.now += TTL
        with pytest.raises(NotLeader):
            ledger.record_event(kind="frozen", at=now, detail={"why": "test"})
        assert ledger.run_rows()  # reads still work
        ledger.fence = OPEN
        ledger.record_event(kind="frozen", at=now, detail={"why": "test"})
        assert len(ledger.event_rows(kind="frozen")) == 1
        single = ledger.begin_operation(run=run, kind="create", target="prod/web", at=now)
        assert [r["epoch"] for r in ledger.open_operations() if r["id"] == single] == [0]


def test_status_of_a_single_daemon_says_single_with_epoch_zero(cli: Any) -> None:
    status = json.loads(cli("status", "--json").stdout)
    assert (status["role"], status["epoch"], status["lease_expires_at"]) == ("single", 0, None)
    assert status["member"] and status["replica_lag_seconds"] is None


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--coordination", "etcd://127.0.0.1:2379", "--once"), {}, "--once cannot be used"),
        (("--ledger-replica", "file:///tmp/x"), {}, "--ledger-replica needs --coordination"),
        (("--coordination", "http://127.0.0.1:2379"), {}, "expected etcd://HOST:PORT"),
        (("--coordination", "etcd://127.0.0.1:99999"), {}, "port from 1 to 65535"),
        (
            ("--coordination", "etcd://127.0.0.1:2379", "--lease-ttl", "30s"),
            {"WATCHDOG_USEC": "60000000"},
            "must be shorter than --lease-ttl",
        ),
        (
            ("--coordination", "etcd://127.0.0.1:2379", "--verify-commits", "strict"),
            {},
            "--verify-commits needs --trusted-signers",
        ),
        (
            ("--coordination", "etcd://127.0.0.1:2379", "--ledger-replica", "ftp://x/y"),
            {},
            "expected file:///DIRECTORY or s3://BUCKET/PATH",
        ),
    ],
)
def test_coordination_settings_that_cannot_work_are_refused_before_anything_starts(
    cli: Any, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        done = cli("daemon", "--repo", str(tmp_path / "nowhere"), *args, timeout=60)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert done.code == 1, (done.stdout, done.stderr)
    assert says in done.stderr
    assert "Traceback" not in done.stderr
