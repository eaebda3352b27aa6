"""The error hierarchy: one root, each branch named by what the caller should do.

Owns: every exception class of reconciler and its built-in plugins, each under one of
three names for what the caller should do: `RetryLater`, `FixTheInput`,
`OperatorActionNeeded` (`Refused` and `GceValueError` stay plain: their callers turn
them into problems or translated errors at once) (a `grep` for
`class .*Error` elsewhere finds none; the test suite checks). Must not: know about exit codes
(the CLI maps errors to exit codes) or about any third-party library (adapters
translate their libraries' exceptions into these).
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Root of every error this package raises on purpose."""


class RetryLater(ReconcilerError):
    """Nothing is wrong with the request: the same call may succeed later (the next
    attempt, the next pass). A wait the other side asked for travels as `retry_after`."""

    retry_after: float | None = None


class FixTheInput(ReconcilerError):
    """The input is wrong (the desired state, a setting, a command's arguments): fix it;
    retrying the same thing fails the same way."""


class OperatorActionNeeded(ReconcilerError):
    """Something an operator must look at (a guard, a failed rollout, a damaged ledger, a
    bug); the message says what to do."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the desired state, located for a human to fix."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class InvalidDesiredState(FixTheInput):
    """The desired state cannot be acted on; fix the files and commit again."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InvalidValue(FixTheInput):
    """One value of the desired state is wrong, worded for the operator. `at` names a
    key below the value the problem belongs to (a health check's `http`, say); an empty
    message means the YAML layer already reported this value. Raised by the checks of
    desired.schema and turned into a `Problem` by validation; it never leaves there."""

    def __init__(self, message: str, *, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at


class ConfigurationError(FixTheInput):
    """The daemon's own settings (credentials, state dir, options) are unusable."""


class TransientError(RetryLater):
    """Try again later: throttling, timeouts, a 5xx from the cloud. `retry_after` is the
    least wait in seconds the cloud asked for (Retry-After), when it said."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderError(OperatorActionNeeded):
    """A cloud call failed in a way retrying will not fix (bad credentials, bad request)."""


class ObservationIncomplete(RetryLater):
    """A listing failed or came back partial; the pass must not mutate anything."""


class GuardRefused(OperatorActionNeeded):
    """A safety guard refused the run; nothing was changed."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


class LedgerError(OperatorActionNeeded):
    """The ledger cannot be opened or written."""


class InternalError(OperatorActionNeeded):
    """An exception of a type the code does not expect (a bug here or in a library):
    the operation it hit failed; report it, clean up what it left, go on."""


class Declined(FixTheInput):
    """The operator answered no to the plan `apply` showed: nothing was changed."""


class Interrupted(RetryLater):
    """A stop (or an operator's request) came: the call in flight finished, nothing new
    was started; the next pass resumes from what the ledger and the tags say."""


class NotLeader(RetryLater):
    """This member does not hold the leader lease, or could not confirm it in time: it
    makes no cloud change and no ledger write (the leader acts, or the next one will)."""


class CoordinationUnavailable(RetryLater):
    """No etcd endpoint answered (or etcd refused the call): no lease can be confirmed."""


class Throttled(TransientError):
    """Rejected before execution (429, or Nova's 413 overLimit with Retry-After)."""


class GceValueError(ValueError):
    """A tag, label or image reference GCE cannot take (the message names it)."""


class OutcomeUnknown(TransientError):
    """The request may or may not have taken effect (lost response, 5xx, timeout)."""


class TokenRefused(TransientError):
    """The API refused our access token (expired or revoked early): fetch a new one."""


class PluginError(OperatorActionNeeded):
    """A plugin could not do its job (probe crashed, switch refused, send failed)."""


class RebuildRefused(OperatorActionNeeded):
    """The ledger still records generations; re-run with --yes to set it aside first."""


class RolloutFailed(OperatorActionNeeded):
    """A batch of new instances did not come up; the service's remaining steps are skipped."""


class HttpRefused(FixTheInput):
    """The server answered, and the answer will not change if asked again (a 4xx)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class BootFailed(OperatorActionNeeded):
    """New instances died while booting or did not run before their deadline."""


class NothingToDo(FixTheInput):
    """The requested change does not apply to the service's current state."""


class Refused(Exception):
    """This path cannot be read as a desired-state file; the message says why."""


class FetchFailed(TransientError):
    """The remote could not be read this time (down, hung, refused); retry later."""


class StateLocked(RetryLater):
    """Another reconciler process holds the state directory; wait for it or stop it."""

    def __init__(self, message: str, *, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder


class StateUnusable(OperatorActionNeeded):
    """The state directory cannot hold the lock (read-only, not a directory, ...)."""


class PromotionRefused(OperatorActionNeeded):
    """`promote` or `set-image` would commit something that has not proven itself (or
    cannot be committed safely); no commit was written. Every reason is listed."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


class GitFailed(OperatorActionNeeded):
    """A git command in the operator's checkout failed; the message says which and why."""
