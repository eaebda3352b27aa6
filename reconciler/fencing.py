"""The fence every mutation passes: may this process change the cloud or the ledger now?

Owns: the `Fence` port (checked before every cloud create and destroy, traffic switch
and ledger write) and the open fence of a single daemon. Must not: know how a
leader is chosen (reconciler.coordination does) or block: a check answers at once.

Cloud APIs cannot check a fencing token, so a leader that was paused past its lease
must be stopped here, on our side, before the call is sent.
"""

from __future__ import annotations

from typing import Final, Protocol


class Fence(Protocol):
    @property
    def epoch(self) -> int | None:
        """The leader's epoch to stamp on what it creates; None without coordination."""
        ...

    def check(self, action: str) -> None:
        """Return if `action` may be done now; raise `NotLeader` otherwise."""
        ...


class OpenFence:
    """One daemon, the state-directory lock: always allowed, no epoch."""

    @property
    def epoch(self) -> int | None:
        return None

    def check(self, action: str) -> None:
        return None


OPEN: Final = OpenFence()
