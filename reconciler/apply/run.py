"""What one apply shares between its parts, and the types an apply reports in.

Owns: the run's inputs (desired state, observed instances, providers, ledger, run id,
clock, stop request), what the parts learn from each other while it runs (instances
launched, generations being activated, instances destroyed, old instances a rolling
update took out), the result and its counting, and the outcome types (`ApplyResult`,
`RolloutFailed`, `Interrupted`) and the health gate port. Must not: call a provider,
write the ledger or decide anything; the parts that receive it do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from threading import Lock
from typing import TYPE_CHECKING, Protocol

from reconciler.errors import Interrupted, ReconcilerError
from reconciler.ledger import Ledger
from reconciler.model import Action, DesiredState, ObservedInstance, ObservedVolume, ServiceSpec
from reconciler.providers import ComputeProvider

if TYPE_CHECKING:  # the progress bar's module imports rich: a no-op pass never needs it
    from reconciler.apply.progress import ProgressHook


def never_stop() -> bool:
    """The default `should_stop`: run to the end."""
    return False


def no_heartbeat() -> None:
    """The default `heartbeat`: nobody is watching."""
    return None


class HealthGate(Protocol):
    """Decides whether freshly running instances may take traffic (`gates.Rollout`
    probes with the health-check plugins)."""

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        """None when every instance passed, else the reason the gate failed."""
        ...


class RunningGate:
    """The gate when none is given (library use, tests): an instance that runs counts as
    healthy. Passes use `gates.Rollout`, which probes a service's `health:`."""

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        return None


@dataclass
class ApplyResult:
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(kw_only=True)
class ApplyRun:
    """One apply's shared state; service groups run in threads, so writes to the
    result (and to anything created lazily) hold `lock`."""

    desired: DesiredState
    observed: Sequence[ObservedInstance]
    providers: Mapping[str, ComputeProvider]
    ledger: Ledger
    run_id: int
    now: Callable[[], datetime]
    should_stop: Callable[[], bool]
    heartbeat: Callable[[], None]
    progress: ProgressHook
    result: ApplyResult
    volumes: Sequence[ObservedVolume] = ()  # the owned data volumes the pass observed
    lock: Lock = field(default_factory=Lock)
    # Per (env, service, generation): instances launched (and gated) by this apply.
    launched: dict[tuple[str, str, int], list[ObservedInstance]] = field(default_factory=dict)
    activating: set[tuple[str, str, int]] = field(default_factory=set)
    # Generations that are (or become) `ready` in this apply: they take no traffic.
    waiting: set[tuple[str, str, int]] = field(default_factory=set)
    destroyed: set[str] = field(default_factory=set)
    # Rolling updates: old instances taken out so far, and the user data to relaunch them.
    rolled: dict[tuple[str, str], list[ObservedInstance]] = field(default_factory=dict)
    old_user_data: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def check_stop(self) -> None:
        self.heartbeat()
        if self.should_stop():
            raise Interrupted("stop requested")

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.result.counts[key] = self.result.counts.get(key, 0) + n
        self.progress.advance(key, n)

    def spec(self, action: Action) -> ServiceSpec:
        spec = self.desired.service(action.env, action.service)
        if spec is None:  # the planner only creates for desired services
            raise ReconcilerError(f"{action.env}/{action.service} is not in the desired state")
        return spec
