"""The daemon on two hosts: follow until this member holds the lease, then lead.

Owns: the member's outer loop under `--coordination`: learn the owner (the leader key
is per owner) from the newest valid commit, campaign, and while leading run the
ordinary `Daemon` with the lease as the fence of the ledger and the providers; the
ledger is restored from the replica before the first pass of each leadership and
streamed to it while leading. Signals stop whichever loop runs; a clean stop resigns
the lease so the other member takes over at once.
Must not: mutate anything while following (no cloud call, no ledger write), or lead
without a fence.
"""

from __future__ import annotations

import signal
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import structlog

from reconciler import engine
from reconciler.coordination.etcd import EtcdElection, parse_endpoints
from reconciler.coordination.leadership import Leadership
from reconciler.coordination.replica import Replica
from reconciler.desired import load_desired_state
from reconciler.errors import FetchFailed, InvalidDesiredState, NotLeader, ReconcilerError
from reconciler.extensions.notify import Notifications
from reconciler.ledger import Ledger
from reconciler.model import DesiredState
from reconciler.ops.rebuild import rebuild_ledger
from reconciler.service.daemon import (
    Daemon,
    DaemonSettings,
    PassObserver,
    Verdict,
    load_signers,
)
from reconciler.service.gitsource import GitSource
from reconciler.service.metrics import Metrics
from reconciler.service.systemd import Notifier, Watchdog
from reconciler.trust.verify import verify

log = structlog.get_logger(__name__)

SLICE = 0.25


@dataclass(frozen=True)
class CoordinationSettings:
    url: str  # etcd://HOST:PORT[,HOST:PORT...]
    ttl: int = 30
    member: str = ""  # default: the host name
    replica: str | None = None  # Litestream replica URL (file:///dir, s3://bucket/path)
    key_prefix: str = "/reconciler"

    @property
    def member_name(self) -> str:
        return self.member or socket.gethostname()


class CoordinatedDaemon:
    def __init__(
        self,
        settings: DaemonSettings,
        coordination: CoordinationSettings,
        *,
        state_dir: Path,
        notifier: Notifier,
        watchdog: Watchdog,
        observer: PassObserver | None = None,
        on_call: engine.ApiCallListener | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.coordination = coordination
        self.state_dir = state_dir
        self.notifier = notifier
        self.watchdog = watchdog
        self.observer = observer
        self.on_call = on_call
        self.endpoints = parse_endpoints(coordination.url)
        self.member = coordination.member_name
        self.replica = Replica(coordination.replica, state_dir) if coordination.replica else None
        self.stop_requested = False
        self.current: Daemon | None = None
        self.leadership: Leadership | None = None
        self.desired: DesiredState | None = None
        # With --verify-commits, the owner (which names the leader key) is read from a
        # trusted head only: an unsigned commit must not move a member to another key.
        self.signers = load_signers(settings, state_dir)
        self.source = GitSource(
            settings.repo, branch=settings.branch, workdir=state_dir / "source",
            timeout=settings.fetch_timeout, heartbeat=watchdog.beat,
        )  # fmt: skip

    # ------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_pass)

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True
        if self.current is not None:
            self.current.stop_requested = True

    def _request_pass(self, signum: int, _frame: FrameType | None) -> None:
        if self.current is not None:
            self.current.pass_requested = True

    # ------------------------------------------------------------ the loop

    def run(self) -> Verdict:
        self.notifier.ready(status=f"member {self.member}: waiting for the leader lease")
        log.info("member_ready", member=self.member, endpoints=[str(e) for e in self.endpoints],
                 ttl=self.coordination.ttl)  # fmt: skip
        while not self.stop_requested:
            self.watchdog.beat()
            leadership = self._leadership()
            if leadership is None or not leadership.try_acquire():
                self._follow(leadership)
                continue
            self._lead(leadership)
        if self.leadership is not None:
            self.leadership.resign()
        self.notifier.stopping(status="stopping")
        log.info("daemon_stopped", member=self.member)
        return Verdict.OK

    def _leadership(self) -> Leadership | None:
        """The election for this owner's key, once the owner is known."""
        if self.leadership is not None:
            return self.leadership
        desired = self._newest_desired()
        if desired is None:
            return None
        self.desired = desired
        key = f"{self.coordination.key_prefix}/{desired.owner}/leader"
        election = EtcdElection(
            self.endpoints, key=key, timeout=max(1.0, self.coordination.ttl / 4)
        )
        self.leadership = Leadership(
            election, member=self.member, ttl=self.coordination.ttl, state_dir=self.state_dir
        )
        self.watchdog.listeners.append(self.leadership.beat)
        if self.replica is not None:
            self.leadership.replica_lag = self.replica.lag_seconds
        log.info("coordination_key", key=key, member=self.member)
        return self.leadership

    def _newest_desired(self) -> DesiredState | None:
        """The head commit's desired state, read only (no ledger write): its owner names
        the leader key and its notifiers hear `leader-changed`."""
        try:
            head = self.source.fetch()
            if self.signers is not None:
                # The newest commit signed by a trusted key (the head, usually).
                history = verify(self.source.workdir, head, self.signers, mode="strict")
                head = next((v.sha for v in history if v.trusted), "")
                if not head:
                    log.warning("owner_unknown", error="no commit signed by a trusted key")
                    return None
            path = self.source.checkout(head, subdir=self.settings.path)
            return load_desired_state(path, commit=head)
        except (FetchFailed, InvalidDesiredState) as exc:
            log.warning("owner_unknown", error=str(exc).splitlines()[0])
            return None

    def _follow(self, leadership: Leadership | None) -> None:
        seen = leadership.leader_seen() if leadership is not None else None
        status = (
            f"follower; leader {seen.member} (epoch {seen.epoch})" if seen is not None
            else "follower; no leader seen"
        )  # fmt: skip
        self.notifier.status(f"member {self.member}: {status}")
        self._pause(max(self.coordination.ttl / 4, 0.5))

    def _lead(self, leadership: Leadership) -> None:
        epoch = leadership.epoch
        try:
            restored = self._take_over_ledger(leadership)
            with Ledger.open(self.state_dir) as ledger:
                ledger.fence = leadership
                if self.metrics is not None:
                    self.metrics.ledger = ledger
                now = datetime.now(UTC)
                ledger.record_event(kind="leader_changed", at=now, detail={
                    "member": self.member, "epoch": epoch, "previous": leadership.previous,
                })  # fmt: skip
                ledger.record_event(kind="ledger_restored", at=now, detail=restored)
                self._notify_leader(epoch, leadership.previous)
                if self.replica is not None:
                    leadership.check("stream the ledger to the replica")
                    self.replica.start(ledger.path)
                try:
                    self.current = Daemon(
                        self.settings, state_dir=self.state_dir, ledger=ledger,
                        notifier=self.notifier, watchdog=self.watchdog,
                        observer=self.observer, on_call=self.on_call,
                        leading=leadership.is_leader, signers=self.signers,
                    )  # fmt: skip
                    if self.stop_requested:
                        self.current.stop_requested = True
                    self.current.run()
                finally:
                    self.current = None
                    if self.metrics is not None:
                        self.metrics.ledger = None
                    if self.replica is not None:
                        self.replica.stop()
        except NotLeader as exc:
            log.warning("leadership_lost", member=self.member, epoch=epoch, why=str(exc))
        except ReconcilerError as exc:
            # Leading is impossible here (the replica cannot be read, the ledger cannot be
            # opened): give the lease up so another member can lead, and say why.
            log.error("leading_failed", member=self.member, epoch=epoch, error=str(exc))
            self.notifier.status(f"member {self.member}: cannot lead: {exc}")
            leadership.resign()
            self._pause(self.coordination.ttl)
        if not self.stop_requested:
            log.warning("following_again", member=self.member, epoch=epoch)

    def _take_over_ledger(self, leadership: Leadership) -> dict[str, object]:
        """The newest replica of the ledger, in place before the first pass; with none
        (or without --ledger-replica), the ledger rebuilt from the cloud's tags: a ledger left
        from an earlier leadership is out of date and must not be planned from."""
        restored = (
            self.replica.restore() if self.replica is not None
            else {"restored": False, "why": "no --ledger-replica: each member keeps its own ledger"}
        )  # fmt: skip
        if restored.get("restored") or self.desired is None:
            return restored
        leadership.check("rebuild the ledger from the cloud's tags")
        providers = engine.build_providers(self.desired, fence=leadership)
        report = rebuild_ledger(
            self.state_dir, self.desired, providers, force=True, now=datetime.now(UTC)
        )
        log.warning("ledger_rebuilt_on_takeover", member=self.member,
                    generations=len(report.generations), instances=report.instances)  # fmt: skip
        return {**restored, "rebuilt_from_tags": True, "generations": len(report.generations),
                "instances": report.instances}  # fmt: skip

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            self.watchdog.beat()
            time.sleep(SLICE)

    # ------------------------------------------------------------ what metrics read

    def member_name(self) -> str:
        return self.member

    def leading(self) -> bool:
        return self.leadership is not None and self.leadership.is_leader()

    def epoch_seen(self) -> int | None:
        return self.leadership.snapshot().epoch if self.leadership is not None else None

    def lease_left(self) -> float | None:
        return self.leadership.snapshot().lease_expires_in if self.leadership else None

    def replica_lag(self) -> float | None:
        return self.replica.lag_seconds() if self.replica is not None and self.leading() else None

    def _notify_leader(self, epoch: int | None, previous: str | None) -> None:
        if self.desired is None:
            return
        Notifications(self.desired.notifiers).send(
            "leader-changed",
            f"member {self.member} leads (epoch {epoch})"
            + (f", after {previous}" if previous else ""),
            detail={"member": self.member, "epoch": epoch, "previous": previous},
        )
