"""The daemon: follow a git branch and reconcile on an interval, under systemd.

Owns: the loop (fetch → validate → apply, then sleep with jitter or backoff), the
last-known-good desired state, history-rewrite refusal, signals (SIGHUP wakes,
SIGTERM/SIGINT stop after the call in flight) and what systemd hears (READY,
WATCHDOG, STATUS, STOPPING). Must not: plan or apply by itself (the engine does) or
exit on a bad commit, an unreachable remote or a failed pass — those are logged,
recorded and retried.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Protocol

import structlog

from reconciler import engine
from reconciler.desired import load_desired_state
from reconciler.desired.files import directory_inside
from reconciler.errors import (
    ConfigurationError,
    FetchFailed,
    GuardRefused,
    InvalidDesiredState,
    Problem,
    ReconcilerError,
    Refused,
)
from reconciler.extensions.notify import Notifications
from reconciler.ledger import Ledger
from reconciler.model import DesiredState
from reconciler.ops.operator import answer_requests
from reconciler.service.gitsource import GitSource
from reconciler.service.systemd import Notifier, Watchdog
from reconciler.trust.signers import TrustedSigners, load_trusted_signers
from reconciler.trust.verify import untrusted, verify

log = structlog.get_logger(__name__)


class Verdict(StrEnum):
    """How a pass (or a `--once` daemon) ended; the CLI turns it into an exit code."""

    OK = "ok"
    FAILED = "failed"
    REFUSED = "refused"


MAX_BACKOFF = 600.0
SLEEP_SLICE = 0.25


@dataclass(frozen=True)
class DaemonSettings:
    repo: str
    branch: str = "main"
    path: str = ""
    interval: float = 60.0
    once: bool = False
    allow_rewind: bool = False
    allow_mass_destroy: bool = False
    fetch_timeout: float = 60.0
    jitter: float = 0.1
    verify_commits: str | None = None  # "strict" or "head"; None: no verification
    trusted_signers: str | None = None  # the file, outside the repository


@dataclass(frozen=True)
class GoodState:
    sha: str
    desired: DesiredState


class PassObserver(Protocol):
    """Receives each pass's outcome (the metrics exporter implements it)."""

    def pass_finished(
        self, *, result: str, seconds: float, outcome: engine.PassOutcome | None
    ) -> None: ...


def load_signers(settings: DaemonSettings, state_dir: Path) -> TrustedSigners | None:
    """The trusted signers under --verify-commits, loaded before anything runs: a
    missing, empty or unreadable file refuses the start (ConfigurationError) rather
    than trusting every commit."""
    if not settings.verify_commits:
        return None
    if not settings.trusted_signers:
        raise ConfigurationError("--verify-commits needs --trusted-signers FILE")
    signers = load_trusted_signers(Path(settings.trusted_signers), state_dir / "trust")
    log.info("commit_verification", mode=settings.verify_commits, signers=signers.describe())
    return signers


class Daemon:
    def __init__(
        self,
        settings: DaemonSettings,
        *,
        state_dir: Path,
        ledger: Ledger,
        notifier: Notifier,
        watchdog: Watchdog,
        observer: PassObserver | None = None,
        on_call: engine.ApiCallListener | None = None,
        leading: Callable[[], bool] = lambda: True,
        signers: TrustedSigners | None = None,
    ) -> None:
        self.settings = settings
        # Under `--coordination`: whether this member still leads. When it stops, so does
        # the loop, between operations (the fence also refuses each mutation).
        self.leading = leading
        self.ledger = ledger
        self.notifier = notifier
        self.watchdog = watchdog
        self.observer = observer
        self.on_call = on_call
        # Plain flags, not threading.Event: a signal handler that takes a lock the
        # interrupted main thread already holds would deadlock.
        self.stop_requested = False
        self.pass_requested = False
        self.source = GitSource(
            settings.repo,
            branch=settings.branch,
            workdir=state_dir / "source",
            timeout=settings.fetch_timeout,
            heartbeat=watchdog.beat,
        )
        self.signers = signers if signers is not None else load_signers(settings, state_dir)
        self.untrusted_head: str | None = None
        # The branch head this daemon will not apply, and why (invalid, untrusted,
        # rewound): shown by the metrics while it lasts.
        self.refused_head: tuple[str, str] | None = None
        self._accepted: frozenset[str] = frozenset()
        self.good: GoodState | None = None
        self.seen: str | None = None
        self.fetch_failures = 0
        self._requests_checked = float("-inf")
        self._requests_pending = False

    # ------------------------------------------------------------ lifecycle

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_pass)

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: the operation in flight finishes, nothing new starts.
        self.stop_requested = True

    def _request_pass(self, signum: int, _frame: FrameType | None) -> None:
        self.pass_requested = True

    def _should_stop(self) -> bool:
        """Polled between operations: a stop signal, or an operator's request (it is
        answered between operations, not after the pass or the interval)."""
        return self.stop_requested or not self.leading() or self._request_waiting()

    def _request_waiting(self) -> bool:
        now = time.monotonic()
        if now - self._requests_checked >= SLEEP_SLICE:
            self._requests_checked = now
            self._requests_pending = self.ledger.pending_request_count() > 0
        return self._requests_pending

    def _answer_requests(self) -> None:
        """What `rollback`, `release`, `retry` and `unfreeze` asked while this daemon
        held the state directory; a pass follows at once to act on the new state."""
        self._requests_pending = False
        answers = answer_requests(self.ledger, self.good.desired if self.good else None)
        if answers:
            self.notifier.status(f"answered {len(answers)} operator request(s): {answers[-1]}")
            self.pass_requested = True

    def _sleep(self, seconds: float) -> None:
        """Wait for the next pass in short slices: feed the watchdog, notice signals
        and operator requests."""
        deadline = time.monotonic() + seconds
        while not (self.stop_requested or self.pass_requested) and self.leading():
            self.watchdog.beat()
            if self._request_waiting():
                self._answer_requests()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(SLEEP_SLICE, remaining))

    def run(self) -> Verdict:
        """Until stopped (or one pass with --once); how it ended (the CLI picks the exit code)."""
        self._restore_last_good()
        self.notifier.ready(status=self._describe_start())
        log.info("daemon_ready", repo=self.settings.repo, branch=self.settings.branch)
        verdict = Verdict.OK
        while not self.stop_requested and self.leading():
            self._answer_requests()
            verdict = self.run_pass()
            if self.settings.once:
                break
            if not self.stop_requested:
                self._answer_requests()  # one that stopped the pass between operations
            self._sleep(self._next_delay())
        if self.stop_requested:
            self.notifier.stopping(status="stopping")
            log.info("daemon_stopped")
        else:  # this member no longer leads: the process goes on, following
            log.warning("passes_stopped", why="leadership lost")
        return verdict if self.settings.once else Verdict.OK

    def _describe_start(self) -> str:
        if self.good is None:
            return "started; waiting for the first valid commit"
        return f"started; last valid commit {self.good.sha[:12]}"

    def _next_delay(self) -> float:
        base = self.settings.interval
        if self.fetch_failures:
            base = min(base * 2 ** (self.fetch_failures - 1), max(base, MAX_BACKOFF))
        spread = self.settings.jitter
        return base * random.uniform(1 - spread, 1 + spread)

    def _restore_last_good(self) -> None:
        """After a restart, heal against the newest commit known to be valid."""
        sha = self.ledger.last_valid_commit()
        if sha is None:
            return
        try:
            if not self.source.has_commit(sha):
                return
            path = self.source.checkout(sha, subdir=self.settings.path)
            desired = self._load(path, sha)
        except (FetchFailed, InvalidDesiredState) as exc:
            log.warning("last_good_unavailable", commit=sha, error=str(exc))
            return
        # Resolving credentials now makes a missing secret fail the start, before READY.
        engine.build_providers(desired)
        self.good = GoodState(sha, desired)

    # ------------------------------------------------------------ one pass

    def run_pass(self) -> Verdict:
        self.pass_requested = False
        self.watchdog.beat()
        started = time.monotonic()
        try:
            head = self.source.fetch()
        except FetchFailed as exc:
            self.fetch_failures += 1
            log.warning("fetch_failed", error=str(exc), failures=self.fetch_failures)
            self.notifier.status(f"git fetch failed ({self.fetch_failures}x): {exc}")
            self._finished("skipped", started, None)
            return Verdict.FAILED
        self.fetch_failures = 0
        if head != self.seen or (head == self.untrusted_head and self._newly_accepted()):
            self.seen = head
            self._consider(head)
        if self.good is None:
            log.warning("no_valid_desired_state", head=head)
            self.notifier.status(f"no valid desired state yet (head {head[:12]})")
            self._finished("skipped", started, None)
            return Verdict.FAILED
        return self._apply(started)

    def _consider(self, head: str) -> None:
        """Adopt `head` as the desired state if it is a valid descendant of what ran."""
        last = self.ledger.last_applied_commit()
        if (
            last is not None
            and last != head
            and not self.settings.allow_rewind
            and self.source.has_commit(last)
            and not self.source.descends_from(last, head)
        ):
            log.error("history_rewritten", head=head, last_applied=last)
            self._event("history_rewritten", {"head": head, "last_applied": last})
            self.refused_head = (head, "rewound")
            self.notifier.status(f"refusing {head[:12]}: it does not descend from {last[:12]}")
            return
        signer: dict[str, str | None] | None = None
        if self.signers is not None:
            checked = self._verify(head, last)
            if checked is None:
                return
            signer = checked
        try:
            path = self.source.checkout(head, subdir=self.settings.path)
            info = self.source.info(head)
        except FetchFailed as exc:
            # Local git trouble, not the commit's fault: tried again next pass.
            self.seen = None
            log.error("checkout_failed", commit=head, error=str(exc))
            self.notifier.status(f"cannot check out {head[:12]}: {exc}")
            return
        now = datetime.now(UTC)
        try:
            desired = self._load(path, head)
        except InvalidDesiredState as exc:
            problems = [str(p) for p in exc.problems]
            self.ledger.record_commit(
                head, author=info.author, subject=info.subject,
                committed_at=info.committed_at, valid=False, at=now, errors=problems,
            )  # fmt: skip
            self._event("invalid_commit", {"commit": head, "errors": problems})
            self.refused_head = (head, "invalid")
            log.error("invalid_commit", commit=head, problems=len(problems), first=problems[0])
            if self.good is not None:  # the broken commit's own notifiers cannot be trusted
                Notifications(self.good.desired.notifiers).send(
                    "invalid-commit",
                    f"commit {head[:12]} ({info.subject}) is invalid and was not applied: "
                    f"{problems[0]}",
                    commit=head, detail={"errors": problems},
                )  # fmt: skip
            return
        self.ledger.record_commit(
            head, author=info.author, subject=info.subject,
            committed_at=info.committed_at, valid=True, at=now, signer=signer,
        )  # fmt: skip
        self.good = GoodState(head, desired)
        self.refused_head = None
        log.info("desired_state_loaded", commit=head, subject=info.subject)

    def _newly_accepted(self) -> bool:
        accepted = frozenset(row["sha"] for row in self.ledger.trusted_commits())
        return accepted != self._accepted

    def _verify(self, head: str, last: str | None) -> dict[str, str | None] | None:
        """The head's signer when it may be applied; None when it is refused (recorded,
        logged and notified like an invalid commit: the daemon keeps healing against
        the last good commit and does not advance)."""
        assert self.signers is not None
        mode = self.settings.verify_commits or "strict"
        self._accepted = frozenset(row["sha"] for row in self.ledger.trusted_commits())
        known = [sha for sha in self._accepted if self.source.has_commit(sha)]
        since = [last] if last is not None and self.source.has_commit(last) else []
        try:
            verdicts = verify(self.source.workdir, head, self.signers, mode=mode,
                              since=since, accepted=known)  # fmt: skip
        except FetchFailed as exc:
            self.seen = None  # local git trouble: tried again next pass
            log.error("verification_failed", commit=head, error=str(exc))
            return None
        refused = untrusted(verdicts, self._accepted)
        if not refused:
            self.untrusted_head = None
            mine = next((v for v in verdicts if v.sha == head), None)
            if mine is None or not mine.trusted:  # accepted by an operator
                return {"key_type": None, "fingerprint": None, "signer": "accepted by hand"}
            sig = mine.signature
            return {"key_type": sig.key_type, "fingerprint": sig.primary or sig.fingerprint,
                    "signer": sig.signer or None}  # fmt: skip
        self.untrusted_head = head
        self.refused_head = (head, "untrusted")
        info = self.source.info(head)
        reasons = [f"{v.sha[:12]} by {v.signature.author} ({v.signature.subject}): {v.why}"
                   for v in refused[:10]]  # fmt: skip
        self.ledger.record_commit(
            head, author=info.author, subject=info.subject, committed_at=info.committed_at,
            valid=False, at=datetime.now(UTC), errors=[f"untrusted: {r}" for r in reasons],
        )  # fmt: skip
        detail = {"mode": mode, "untrusted": [v.to_json() for v in refused[:20]]}
        self._event("untrusted_commit", {"commit": head, **detail})
        log.error("untrusted_commit", commit=head, mode=mode, untrusted=len(refused),
                  first=reasons[0])  # fmt: skip
        self.notifier.status(f"refusing {head[:12]}: {reasons[0]}")
        if self.good is not None:
            Notifications(self.good.desired.notifiers).send(
                "untrusted-commit",
                f"commit {head[:12]} ({info.subject}) by {info.author} was not applied: "
                f"{reasons[0]}",
                commit=head, detail=detail,
            )  # fmt: skip
        return None

    def _load(self, path: Path, sha: str) -> DesiredState:
        """The commit's desired state at `path`, or InvalidDesiredState saying why not.

        `--path` must be a directory of the commit itself: a commit that turns it into a
        symlink out of the checkout, a loop or a file is invalid, never followed. And
        whatever else reading it raises is that commit's problem too, recorded and
        notified: one commit must never stop the daemon healing everything else."""
        try:
            directory_inside(self.source.workdir, path)
        except Refused as exc:
            where = self.settings.path or "the repository root"
            why = str(exc).replace("the desired-state directory", "the repository")
            problem = Problem(str(path), None, "", f"--path {where} {why}")
            raise InvalidDesiredState([problem]) from None
        try:
            return load_desired_state(path, commit=sha)
        except InvalidDesiredState:
            raise
        # The boundary of the loader: a bug in it (or a library under it) is reported as
        # this commit's problem, with the traceback in the log, instead of ending the loop.
        except Exception as exc:
            log.exception("desired_state_unreadable", commit=sha, error_type=type(exc).__name__)
            raise InvalidDesiredState([Problem(
                str(path), None, "",
                f"the desired state could not be read: unexpected {type(exc).__name__} "
                "(a bug in reconciler: the log has the details)",
            )]) from exc  # fmt: skip

    def _apply(self, started: float) -> Verdict:
        assert self.good is not None
        outcome: engine.PassOutcome | None = None
        try:
            outcome = engine.apply_pass(
                self.good.desired,
                self.ledger,
                command="daemon",
                allow_mass_destroy=self.settings.allow_mass_destroy,
                should_stop=self._should_stop,
                heartbeat=self.watchdog.beat,
                on_call=self.on_call,
            )
        except GuardRefused as exc:
            self.notifier.status(f"refused by a guard: {exc}")
            self._finished("refused", started, None)
            return Verdict.REFUSED
        except ReconcilerError as exc:
            log.error("pass_failed", error=str(exc))
            self.notifier.status(f"pass failed: {exc}")
            self._finished("failed", started, None)
            return Verdict.FAILED
        # The loop's last line of defence: a bug in one pass is logged with its traceback
        # and shown, and the next pass runs; only a stop signal ends the daemon.
        except Exception as exc:
            log.exception("pass_crashed", error_type=type(exc).__name__)
            self.notifier.status(f"pass crashed: unexpected {type(exc).__name__} (see the log)")
            self._finished("failed", started, None)
            return Verdict.FAILED
        result = outcome.result
        assert result is not None
        summary = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items())) or "no changes"
        # The words of the run's own `run_finished` line, in STATUS= and the metrics.
        state = outcome.result_name or ("failed" if not result.ok else "changes")
        self.notifier.status(f"run {outcome.run_id} {state} at {self.good.sha[:12]}: {summary}")
        self._finished(state, started, outcome)
        return Verdict.OK if result.ok else Verdict.FAILED

    def _finished(self, result: str, started: float, outcome: engine.PassOutcome | None) -> None:
        if self.observer is not None:
            self.observer.pass_finished(
                result=result, seconds=time.monotonic() - started, outcome=outcome
            )

    def _event(self, kind: str, detail: dict[str, object]) -> None:
        self.ledger.record_event(kind=kind, at=datetime.now(UTC), detail=detail)
