"""The retry policy every adapter shares (providers/calls.py): a wait the cloud asked
for is honoured in full and counts against the call's time budget. Waits are recorded
through the policy's `sleep` seam, not slept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from reconciler.errors import ProviderError, TransientError
from reconciler.providers.calls import RETRY_AFTER_MAX, ProviderCalls, retry_after_seconds


def calls(slept: list[float], *, seconds: float = 60.0, attempts: int = 5) -> ProviderCalls:
    return ProviderCalls(
        "cloud",
        translate=lambda exc, action: exc,
        attempts=attempts,
        seconds=seconds,
        sleep=slept.append,
    )


def refused(times: int, *, retry_after: float | None):  # type: ignore[no-untyped-def]
    state = {"left": times}

    def call() -> str:
        if state["left"]:
            state["left"] -= 1
            raise TransientError("throttled", retry_after=retry_after)
        return "done"

    return call


def test_a_retry_after_is_waited_in_full() -> None:
    slept: list[float] = []
    assert calls(slept).call("Put", refused(1, retry_after=20.0)) == "done"
    assert slept and slept[0] >= 20.0


def test_without_retry_after_the_backoff_stays_short() -> None:
    slept: list[float] = []
    assert calls(slept).call("Put", refused(2, retry_after=None)) == "done"
    assert len(slept) == 2 and all(s <= 10.0 for s in slept)


def test_a_wait_past_the_budget_ends_the_retries_without_sleeping() -> None:
    slept: list[float] = []
    with pytest.raises(TransientError, match="throttled"):
        calls(slept, seconds=30.0).call("Put", refused(1, retry_after=45.0))
    assert slept == []


def test_waits_count_against_the_budget() -> None:
    slept: list[float] = []
    # Two 20 s waits fit a 50 s budget only if the elapsed time ignored them: the clock
    # here is real, so the policy must add the waits it asked for itself.
    with pytest.raises(TransientError):
        calls(slept, seconds=50.0).call("Put", refused(3, retry_after=20.0))
    assert len(slept) <= 2


def test_terminal_errors_are_not_retried() -> None:
    slept: list[float] = []

    def rejected() -> str:
        raise ProviderError("bad request")

    with pytest.raises(ProviderError):
        calls(slept).call("Put", rejected)
    assert slept == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "20"}, 20.0),
        ({"retry-after": "7"}, 7.0),
        ({"RETRY-AFTER": " 3 "}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "86400"}, RETRY_AFTER_MAX),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_header_values(headers: dict[str, str] | None, expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    header = {"Retry-After": format_datetime(now + timedelta(seconds=30), usegmt=True)}
    assert retry_after_seconds(header, now=lambda: now) == 30.0
    past = {"Retry-After": format_datetime(now - timedelta(seconds=30), usegmt=True)}
    assert retry_after_seconds(past, now=lambda: now) == 0.0
