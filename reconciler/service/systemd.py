"""The daemon's side of the systemd service protocol: sd_notify(3) and the watchdog.

Owns: sending READY/STATUS/STOPPING/WATCHDOG datagrams to `$NOTIFY_SOCKET`, and
pacing watchdog pings from `$WATCHDOG_USEC`/`$WATCHDOG_PID`.
Must not: import anything outside the standard library, log, raise because systemd
went away, or ping from a background thread (a hung main loop has to stop the pings
so that systemd restarts the service instead of the hang going unnoticed).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

# A full notify queue makes a datagram send block; better to drop one message than
# to stall the main loop behind a systemd that is not reading.
SEND_TIMEOUT: Final = 2.0


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET (AF_UNIX SOCK_DGRAM; a leading '@' means the
    abstract namespace). A no-op when the variable is unset."""

    def __init__(self, address: str | None = None) -> None:
        # sd_notify accepts only absolute paths and '@' names; anything else (say a
        # vsock address) is not ours to speak to, so it disables notifications.
        self._address = _socket_address(address) if address else None
        self.enabled: bool = self._address is not None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    def send(self, *fields: str) -> None:
        """Send `fields` as one datagram, joined by newlines; errors are dropped."""
        if self._address is None or not fields:
            return
        # "replace": a status built from a surrogate-escaped file name must not raise.
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(payload, self._address)
        except OSError:
            # The daemon must outlive its supervisor's socket (restart of systemd,
            # a test harness gone): a lost notification is harmless, a crash is not.
            pass

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *_status_fields(status))

    def status(self, text: str) -> None:
        self.send(*_status_fields(text))

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *_status_fields(status))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


class Watchdog:
    """Feeds systemd's watchdog at half of WATCHDOG_USEC. beat() is called from the main
    loop and from inside long waits; it is rate-limited so callers may call it often. No
    background thread: if the main loop hangs, the pings stop and systemd restarts the
    service."""

    def __init__(
        self,
        notifier: Notifier,
        environ: Mapping[str, str] = os.environ,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._clock = clock
        self._last: float | None = None
        self.interval: float | None = _watchdog_interval(environ)
        # Told of every beat, rate-limited or not: a leader's lease is renewed only
        # while the main loop shows it is alive (reconciler.coordination).
        self.listeners: list[Callable[[], None]] = []

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def beat(self) -> None:
        """Ping if at least `interval` seconds passed since the last ping (or never pinged)."""
        for listener in self.listeners:
            listener()
        if self.interval is None:
            return
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._notifier.watchdog()
            self._last = now

    def sleep(self, seconds: float, *, wake: threading.Event | None = None) -> bool:
        """Wait `seconds`, beating between slices; True as soon as `wake` is set.

        The wait itself runs on the real monotonic clock (an injected clock only paces
        the pings), so a fake clock in tests cannot make it spin or hang.
        """
        deadline = time.monotonic() + seconds
        # Half the ping interval keeps the gap between two pings under 1.5 x interval,
        # i.e. three quarters of systemd's timeout, even on a loaded host.
        slice_max = self.interval / 2 if self.interval is not None else None
        while True:
            self.beat()
            if wake is not None and wake.is_set():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            step = remaining if slice_max is None else min(remaining, slice_max)
            if wake is not None:
                if wake.wait(step):
                    self.beat()
                    return True
            else:
                time.sleep(step)


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte instead of '@'.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _status_fields(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would end the STATUS= field and start a forged one.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between pings per sd_watchdog_enabled(3); None when not asked for."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid:
        # The variables are inherited by children; only the process systemd named pings.
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1e6
