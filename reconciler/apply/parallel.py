"""Bounded concurrency for cloud calls: at most N in flight overall, fewer per provider.

Owns: the worker threads that run one service's launches side by side, and the two
bounds on them: `policy.max_parallel` calls in flight overall, and a per-provider
bound that leaves every other provider at least one slot, so one slow cloud cannot
hold every slot while the others wait. Must not: decide what to call, record anything
(callers write the ledger intent before each call, inside the function they submit),
or swallow errors other than our own (a bug surfaces in the caller's thread).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from threading import BoundedSemaphore, Lock
from typing import TypeVar

import structlog

from reconciler.errors import InternalError, ReconcilerError

log = structlog.get_logger(__name__)

T = TypeVar("T")


def per_provider_bound(total: int, providers: int) -> int:
    """Slots one provider may hold: all of them alone, else all but one per other provider."""
    return max(1, total - max(0, providers - 1))


class LaunchSlots:
    """Runs calls on per-provider worker pools under an overall semaphore."""

    def __init__(self, *, total: int, providers: Collection[str]) -> None:
        self.total = max(1, total)
        self.per_provider = per_provider_bound(self.total, len(providers))
        self._overall = BoundedSemaphore(self.total)
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = Lock()

    def _pool(self, provider: str) -> ThreadPoolExecutor:
        # A pool per provider, sized to its bound: its workers can only ever hold that
        # provider's share of the overall slots.
        with self._lock:
            pool = self._pools.get(provider)
            if pool is None:
                pool = ThreadPoolExecutor(
                    max_workers=self.per_provider, thread_name_prefix=f"launch-{provider}"
                )
                self._pools[provider] = pool
            return pool

    def _bounded(self, fn: Callable[[], T]) -> T:
        with self._overall:
            return fn()

    def bounded(self, fn: Callable[[], T]) -> T:
        """One call in the caller's thread, holding one of the overall slots (destroys)."""
        return self._bounded(fn)

    def run(self, provider: str, calls: Sequence[Callable[[], T]]) -> list[T | ReconcilerError]:
        """Each call's result or our error, in the order given; waits for all of them,
        so no call is still in flight (and unrecorded by the caller) when this returns."""
        if len(calls) == 1:  # nothing to overlap: skip the thread hop
            try:
                return [self._bounded(calls[0])]
            except ReconcilerError as exc:
                return [exc]
            except Exception as exc:  # see _unexpected
                return [_unexpected(exc)]
        pool = self._pool(provider)
        # Each call runs in a copy of the caller's context, so log lines keep the run id.
        futures: list[Future[T]] = [
            pool.submit(contextvars.copy_context().run, self._bounded, call) for call in calls
        ]
        wait(futures)
        outcomes: list[T | ReconcilerError] = []
        for future in futures:
            error = future.exception()
            if error is None:
                outcomes.append(future.result())
            elif isinstance(error, ReconcilerError):
                outcomes.append(error)
            elif isinstance(error, Exception):
                outcomes.append(_unexpected(error))
            else:
                raise error
        return outcomes

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True)


def _unexpected(error: Exception) -> InternalError:
    """A call's unexpected exception as its outcome: raised instead, it would hide the
    calls that did succeed (launched instances the caller must record or clean up)."""
    log.error("call_crashed", error_type=type(error).__name__, exc_info=error)
    wrapped = InternalError(f"unexpected {type(error).__name__}")
    wrapped.__cause__ = error
    return wrapped
