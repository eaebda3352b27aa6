"""The one retry policy: cloud API calls, webhook deliveries and HTTP probes all retry
the same way (STYLE point 4: explicit stop and wait, jitter, each retry logged).

Owns: tenacity (the only module that imports it) and `retrying`. Must not: know what
it retries; callers raise `TransientError` for what may be tried again (with
`retry_after` when the other side said how long to wait) and anything else for what
may not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from reconciler.errors import TransientError

log = structlog.get_logger(__name__)

__all__ = ["Retrying", "retrying"]


class _PastBudget(stop_base):
    """Stop when the time spent (the waits included: `idle_for` sums them) plus the
    wait ahead reaches the budget: a retry that could only start after it is not made."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, state: RetryCallState) -> bool:
        spent = max(state.seconds_since_start or 0.0, state.idle_for)
        return spent + state.upcoming_sleep >= self.seconds


def retrying(
    provider: str,
    action: str,
    *,
    attempts: int,
    seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    event: str = "provider_call_retry",
) -> Retrying:
    """The retry policy for one action: only TransientError is retried, within both
    `attempts` and `seconds` (so a slow cloud cannot stretch a pass without bound),
    with jittered exponential waits (so adapters in many threads do not retry in step),
    each retry logged. A wait the cloud asked for (`TransientError.retry_after`, from
    Retry-After) is honoured in full, since sooner would only be refused again, and it
    counts against `seconds`: a wait that would end past the budget ends the retries
    now instead of sleeping into a certain failure."""
    backoff = wait_random_exponential(multiplier=0.5, max=10)

    def wait(state: RetryCallState) -> float:
        seconds = float(backoff(state))
        error = state.outcome.exception() if state.outcome else None
        hint = error.retry_after if isinstance(error, TransientError) else None
        return max(seconds, hint) if hint is not None else seconds

    return Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(attempts) | _PastBudget(seconds),
        wait=wait,
        sleep=sleep,
        before_sleep=lambda state: log.warning(
            event,
            provider=provider,
            action=action,
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            error=str(state.outcome.exception()) if state.outcome else None,
        ),
        reraise=True,
    )
