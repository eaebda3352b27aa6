"""How every adapter calls its cloud: bounded retries, counting, and creates sent once.

Owns: applying the retry policy all adapters share (`reconciler.retrypolicy`, each
retry logged as `provider_call_retry`), `OutcomeUnknown`, running one API call (counted for metrics,
its exception translated by the adapter, retried when transient), and the
create-with-lookup loop that keeps an unknown outcome from launching twice.
Must not: import libcloud or know any cloud's errors — each adapter translates its
own library's exceptions into ours (`translate`) before anything here looks at them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import structlog

from reconciler.errors import ObservationIncomplete, OutcomeUnknown, TransientError
from reconciler.retrypolicy import Retrying, retrying

log = structlog.get_logger(__name__)

T = TypeVar("T")

# (exception, action) -> our error. The adapter's own mapping: only it knows its cloud.
Translate = Callable[[Exception, str], Exception]
# A Retry-After beyond this is not believed: no cloud documents waits of hours.
RETRY_AFTER_MAX = 300.0


def retry_after_seconds(
    headers: Mapping[str, str] | None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> float | None:
    """The wait a response's Retry-After header asks for, in seconds (RFC 9110: a number
    of seconds or an HTTP date), at most RETRY_AFTER_MAX; None when absent or unreadable.
    Header names are matched without regard to case."""
    value = next((v for k, v in (headers or {}).items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else None
        if seconds is None:
            seconds = (parsedate_to_datetime(text) - now()).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class ProviderCalls:
    """One adapter's way of running API calls: each attempt counted (when the adapter
    counts here rather than in its libcloud connection), its exception translated by
    the adapter, transient failures retried under `retrying`."""

    def __init__(
        self,
        provider: str,
        *,
        translate: Translate,
        attempts: int,
        seconds: float,
        on_call: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.provider = provider
        self._translate = translate
        self._attempts = attempts
        self._seconds = seconds
        self._on_call = on_call  # (provider, action) per request sent: metrics
        self._sleep = sleep  # tests record the waits instead of sleeping them

    def count(self, action: str) -> None:
        """Report one request sent (also for requests made outside `attempt`)."""
        if self._on_call is not None:
            self._on_call(self.provider, action)

    def retrying(self, action: str) -> Retrying:
        return retrying(
            self.provider,
            action,
            attempts=self._attempts,
            seconds=self._seconds,
            sleep=self._sleep,
        )

    def attempt(self, action: str, fn: Callable[[], T]) -> T:
        """Run `fn` once: counted, and any failure re-raised as the adapter's error."""
        self.count(action)
        try:
            return fn()
        except Exception as exc:  # translated at this edge, re-raised typed
            raise self._translate(exc, action) from None

    def call(self, action: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one API call; retry transient failures with jittered backoff. `retry=False`
        is for lookups inside another call's retries, which must not multiply them."""
        if not retry:
            return self.attempt(action, fn)
        for attempt in self.retrying(action):
            with attempt:
                return self.attempt(action, fn)
        raise AssertionError("unreachable")  # pragma: no cover


def launch_once(
    launch: Callable[[], T],
    *,
    retrying: Retrying,
    look_up: Callable[[], T | None],
    find: Callable[[], T | None],
) -> T:
    """A create, retried without ever being sent again after an unknown outcome unless
    a lookup says the earlier one took no effect (a resent create could launch twice).

    `launch` is one counted, translated attempt; it raises OutcomeUnknown when the
    create may have happened. Before each resend, `look_up` (one unretried lookup)
    returns what the earlier attempt made, or None; it must raise OutcomeUnknown when
    it cannot tell, so the retries go on without resending blind. When the retries run
    out after an unknown outcome, `find` gets a last chance (with its own retries); a
    listing it cannot complete (ObservationIncomplete) leaves the original error."""
    unknown = False  # did an earlier attempt possibly create it?
    try:
        for attempt in retrying:
            with attempt:
                if unknown:
                    existing = look_up()
                    if existing is not None:
                        return existing
                try:
                    made = launch()
                except OutcomeUnknown:
                    unknown = True
                    raise
    except TransientError:
        if unknown:
            try:
                existing = find()
            except ObservationIncomplete:
                existing = None
            if existing is not None:
                return existing
        raise
    return made
