"""Prometheus metrics for the daemon (`--metrics-addr`), via prometheus-client.

Owns: the metric families, their update from each pass's outcome and the ledger,
and the loopback-or-configured HTTP exporter. Must not: be imported by the planner
or adapters (adapters report API calls through a plain callback), or label anything
with a secret.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from reconciler.engine import PassOutcome
from reconciler.errors import ConfigurationError
from reconciler.ledger import Ledger
from reconciler.model import GenerationState


class Metrics:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("reconciler_runs", "Passes by result.", ["result"], registry=r)
        self.drift = Counter(
            "reconciler_drift", "Planned cloud changes by drift reason.", ["reason"], registry=r
        )
        self.instances = Gauge(
            "reconciler_instances", "Owned instances seen by the last pass.",
            ["env", "service", "state"], registry=r,
        )  # fmt: skip
        self.active_generation = Gauge(
            "reconciler_active_generation", "Number of the active generation.",
            ["env", "service"], registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "reconciler_last_success_timestamp_seconds",
            "When the last pass that did not fail ended (Unix time).", registry=r,
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
        if result in ("ok", "interrupted"):
            self.last_success.set_to_current_time()
        if outcome is None:
            return
        for action in outcome.plan.mutating():
            self.drift.labels(reason=action.reason.value).inc()
        self._fleet(outcome)

    def _fleet(self, outcome: PassOutcome) -> None:
        tally = Tally((i.env or "", i.service or "", i.state.value) for i in outcome.observed)
        self.instances.clear()
        for (env, service, state), n in tally.items():
            self.instances.labels(env=env, service=service, state=state).set(n)
        self.active_generation.clear()
        for gen in self.ledger.view().generations:
            if gen.state is GenerationState.ACTIVE:
                self.active_generation.labels(env=gen.env, service=gen.service).set(gen.number)
        live = self.ledger.instance_rows(live_only=True)
        self.hourly_cost.set(sum(row["price_per_hour"] or 0.0 for row in live))
