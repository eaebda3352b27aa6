"""Prometheus metrics for the daemon (`--metrics-addr`), via prometheus-client.

Owns: the metric families, their update from each pass's outcome and the ledger,
and the loopback-or-configured HTTP exporter. Must not: be imported by the planner
or adapters (adapters report API calls through a plain callback), or label anything
with a secret.

Series of a service stay while the service is desired (a service with nothing running
exports 0, it does not vanish); the `result` label uses the words of the
`run_finished` log line (`no-op`, `changes`, `failed`, `interrupted`, `refused`,
`skipped`).
"""

from __future__ import annotations

from collections import Counter as Tally
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from reconciler import accounting, buildinfo
from reconciler.engine import PassOutcome
from reconciler.errors import ConfigurationError, ReconcilerError
from reconciler.ledger import Ledger
from reconciler.model import HOLD_REASONS, GenerationState

RUN_RESULTS = ("no-op", "changes", "failed", "interrupted", "refused", "skipped")
SUCCESSFUL = ("no-op", "changes", "interrupted")


class Metrics:
    def __init__(self, ledger: Ledger | None) -> None:
        # None for a member that follows (`--coordination`): it reads no ledger; the
        # leader's is attached while it leads.
        self.ledger = ledger
        self.registry = CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "reconciler_build_info", "Always 1: the running version and its source commit.",
            ["version", "commit"], registry=r,
        )  # fmt: skip
        self.build_info.labels(version=buildinfo.version(), commit=buildinfo.commit()).set(1)
        self.runs = Counter("reconciler_runs", "Passes by result.", ["result"], registry=r)
        for result in RUN_RESULTS:
            self.runs.labels(result=result)  # every result exported from the start, at 0
        self.drift = Counter(
            "reconciler_drift", "Planned cloud changes by drift reason.", ["reason"], registry=r
        )
        self.instances = Gauge(
            "reconciler_instances", "Owned instances seen by the last pass.",
            ["env", "service", "state"], registry=r,
        )  # fmt: skip
        self.desired = Gauge(
            "reconciler_service_desired_instances", "Instances the desired state asks for.",
            ["env", "service"], registry=r,
        )  # fmt: skip
        self.running = Gauge(
            "reconciler_service_running_instances",
            "Running instances of the service's active generation (0 when it has none).",
            ["env", "service"], registry=r,
        )  # fmt: skip
        self.held = Gauge(
            "reconciler_service_held",
            "1 when the service's drift is held (pinned, failed, frozen), it is down, or a new "
            "generation waits for its switch (waiting).",
            ["env", "service", "reason"], registry=r,
        )  # fmt: skip
        self.failed_generations = Gauge(
            "reconciler_failed_generations", "Generations of the service that failed, ever.",
            ["env", "service"], registry=r,
        )  # fmt: skip
        self.active_generation = Gauge(
            "reconciler_active_generation", "Number of the active generation (0: none).",
            ["env", "service"], registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "reconciler_last_success_timestamp_seconds",
            "When the last pass that did not fail ended (Unix time).", registry=r,
        )  # fmt: skip
        self.last_pass = Gauge(
            "reconciler_last_pass_timestamp_seconds", "When the last pass ended (Unix time).",
            registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "reconciler_pass_duration_seconds", "Wall time of a pass.", registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
        )  # fmt: skip
        self.api_calls = Counter(
            "reconciler_cloud_api_calls", "Cloud API requests sent.",
            ["provider", "action"], registry=r,
        )  # fmt: skip
        self.hourly_cost = Gauge(
            "reconciler_hourly_cost_dollars", "Price per hour of every live instance.",
            registry=r,
        )  # fmt: skip
        self.orphans = Gauge(
            "reconciler_orphans", "Orphaned instances found in the last observation, by kind.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.orphans_cost = Gauge(
            "reconciler_orphans_hourly_cost_dollars",
            "Price per hour of every orphaned instance in the last observation.", registry=r,
        )  # fmt: skip
        self.requests_pending = Gauge(
            "reconciler_requests_pending",
            "Operator requests (rollback, release, retry, unfreeze) not yet answered.",
            registry=r,
        )  # fmt: skip
        self.interval = Gauge(
            "reconciler_pass_interval_seconds",
            "The daemon's --interval: alerts count missed passes in it.", registry=r,
        )  # fmt: skip
        self.started = Gauge(
            "reconciler_started_timestamp_seconds", "When this daemon started (Unix time).",
            registry=r,
        )  # fmt: skip
        self.started.set_to_current_time()
        self._services: set[tuple[str, str]] = set()

    def daemon_started(self, *, interval: float) -> None:
        self.interval.set(interval)

    def watch_head(self, daemon: HeadState) -> None:
        """1 while the branch head is refused (invalid, untrusted, rewound): the daemon
        heals against the last good commit, and someone must look."""
        gauge = Gauge(
            "reconciler_head_refused",
            "1 while the branch head is not applied, by reason (invalid, untrusted, rewound).",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        for reason in HEAD_REFUSALS:
            gauge.labels(reason=reason).set_function(partial(_refused, daemon, reason))

    def watch_coordination(self, state: CoordinationState) -> None:
        """Role, epoch, lease and replica lag of a member under `--coordination`, read
        at each scrape (a follower runs no pass, yet its metrics must stay current)."""
        r = self.registry
        leader = Gauge("reconciler_leader", "1 while this member leads, 0 while it follows.",
                       ["member"], registry=r)  # fmt: skip
        leader.labels(member=state.member_name()).set_function(lambda: float(state.leading()))
        Gauge(
            "reconciler_leader_epoch",
            "The epoch of the leader this member last saw (its own while it leads).",
            registry=r,
        ).set_function(lambda: float(state.epoch_seen() or 0))
        Gauge(
            "reconciler_lease_seconds_left",
            "Seconds before this leader's fence closes unless the lease is renewed (0: follower).",
            registry=r,
        ).set_function(lambda: float(state.lease_left() or 0.0))
        Gauge(
            "reconciler_replica_lag_seconds",
            "How far the ledger's replica is behind the ledger (NaN: unknown, e.g. on S3).",
            registry=r,
        ).set_function(lambda: _or_nan(state.replica_lag()))

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        except (ValueError, OSError) as exc:
            raise ConfigurationError(f"--metrics-addr {address}: {exc}") from None

    def api_call(self, provider: str, action: str) -> None:
        self.api_calls.labels(provider=provider, action=action).inc()

    def pass_finished(self, *, result: str, seconds: float, outcome: PassOutcome | None) -> None:
        self.runs.labels(result=result).inc()
        self.duration.observe(seconds)
        self.last_pass.set_to_current_time()
        if result in SUCCESSFUL:
            self.last_success.set_to_current_time()
        ledger = self.ledger
        if ledger is None:
            return
        self.requests_pending.set(ledger.pending_request_count())
        if outcome is None:
            return
        for action in outcome.plan.mutating():
            self.drift.labels(reason=action.reason.value).inc()
        self._fleet(outcome, ledger)
        self._orphans(ledger)

    def _fleet(self, outcome: PassOutcome, ledger: Ledger) -> None:
        tally = Tally((i.env or "", i.service or "", i.state.value) for i in outcome.observed)
        self.instances.clear()
        for (env, service, state), n in tally.items():
            self.instances.labels(env=env, service=service, state=state).set(n)
        services = {(s.env, s.name): s for s in outcome.desired.services()}
        for env, service in self._services - services.keys():
            self._forget(env, service)  # no longer desired: its series go with it
        self._services = set(services)
        view = ledger.view()
        active = {
            (g.env, g.service): g for g in view.generations if g.state is GenerationState.ACTIVE
        }
        failed = Tally((g.env, g.service) for g in view.generations if g.failed)
        alive = Tally((i.env, i.service, i.generation) for i in outcome.observed if i.alive)
        held = {(h.env, h.service, h.reason.value) for h in outcome.plan.held}
        for (env, service), spec in services.items():
            gen = active.get((env, service))
            self.desired.labels(env=env, service=service).set(spec.count)
            self.running.labels(env=env, service=service).set(
                alive[(env, service, gen.number)] if gen else 0
            )
            self.active_generation.labels(env=env, service=service).set(gen.number if gen else 0)
            self.failed_generations.labels(env=env, service=service).set(failed[(env, service)])
            for reason in HOLD_REASONS:
                self.held.labels(env=env, service=service, reason=reason.value).set(
                    1 if (env, service, reason.value) in held else 0
                )
        live = ledger.instance_rows(live_only=True)
        self.hourly_cost.set(sum(row["price_per_hour"] or 0.0 for row in live))

    def _forget(self, env: str, service: str) -> None:
        for gauge in (self.desired, self.running, self.active_generation,
                      self.failed_generations):  # fmt: skip
            _remove(gauge, env, service)
        for reason in HOLD_REASONS:
            _remove(self.held, env, service, reason.value)

    def _orphans(self, ledger: Ledger) -> None:
        try:
            report = accounting.find_orphans(ledger, now=datetime.now(UTC))
        except ReconcilerError:
            return  # the listing is reported by `ledger orphans`; metrics keep the last
        kinds = Tally(o.kind for o in report.orphans)
        self.orphans.clear()
        for kind, n in kinds.items():
            self.orphans.labels(kind=kind).set(n)
        self.orphans_cost.set(sum(o.price_per_hour or 0.0 for o in report.orphans))


HEAD_REFUSALS = ("invalid", "untrusted", "rewound")


def _refused(daemon: HeadState, reason: str) -> float:
    return float(daemon.refused_head is not None and daemon.refused_head[1] == reason)


class HeadState(Protocol):
    refused_head: tuple[str, str] | None


class CoordinationState(Protocol):
    def member_name(self) -> str: ...
    def leading(self) -> bool: ...
    def epoch_seen(self) -> int | None: ...
    def lease_left(self) -> float | None: ...
    def replica_lag(self) -> float | None: ...


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _remove(gauge: Gauge, *labels: str) -> None:
    with suppress(KeyError):
        gauge.remove(*labels)
