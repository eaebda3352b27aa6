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
        """The epoch to stamp on intents (and, under coordination, on instances and
        requests); 0 without coordination, None for a member that does not lead."""
        ...

    def check(self, action: str) -> None:
        """Return if `action` may be done now; raise `NotLeader` otherwise."""
        ...


class OpenFence:
    """One daemon, the state-directory lock: always allowed; its epoch is 0 (DESIGN §8)."""

    @property
    def epoch(self) -> int | None:
        return 0

    def check(self, action: str) -> None:
        return None


OPEN: Final = OpenFence()
