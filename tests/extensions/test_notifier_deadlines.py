"""A notifier may fail, never block or crash a pass: every delivery has a total deadline
(connect, send and every read together), and whatever a notifier raises is contained.
The slow receiver is a real HTTP server on loopback that trickles its answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import structlog
from reconciler_plugins import notifiers as builtin

from reconciler.errors import PluginError
from reconciler.extensions.api import Notification, PluginSet
from reconciler.extensions.notify import Notifications
from reconciler.model import NotifierSpec


@pytest.fixture
def trickler() -> Iterator[str]:
    """Accepts, then sends one byte of an HTTP answer every 2 s, for ever."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 100:
                if stop.wait(2.0):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(5)
    server.close()


NOTE = Notification(kind="generation-failed", text="web g2 failed")


@pytest.mark.timeout(60)
def test_the_webhook_gives_up_at_its_deadline_on_a_trickling_receiver(
    trickler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin, "DEADLINE", 3.0)
    with pytest.raises(PluginError, match="webhook delivery failed"):
        builtin.WebhookNotifier(trickler, secret=None).notify(NOTE)


@pytest.mark.timeout(60)
def test_a_command_notifier_and_its_children_are_stopped_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(builtin, "DEADLINE", 1.0)
    # The child keeps the output pipes open after the shell is gone.
    notifier = builtin.CommandNotifier("sh -c 'sleep 600 & sleep 600'", secret=None)
    with pytest.raises(PluginError, match="did not finish within 1s"):
        notifier.notify(NOTE)


class Hangs:
    def __init__(self, target: str, *, secret: str | None) -> None:
        pass

    def notify(self, notification: Notification) -> None:
        threading.Event().wait(600)


class Crashes:
    def __init__(self, target: str, *, secret: str | None) -> None:
        pass

    def notify(self, notification: Notification) -> None:
        raise ValueError("unknown url type: 'ftp://user:TOKEN@example'")


class Exits:
    def __init__(self, target: str, *, secret: str | None) -> None:
        pass

    def notify(self, notification: Notification) -> None:
        raise SystemExit(3)


@pytest.mark.timeout(60)
def test_the_dispatch_neither_blocks_on_nor_crashes_with_a_plugin() -> None:
    plugins = PluginSet(notifiers={"hangs": Hangs, "crashes": Crashes, "exits": Exits})
    specs = [NotifierSpec(kind="hangs", target="x", timeout=1.0),
             NotifierSpec(kind="crashes", target="y"),
             NotifierSpec(kind="exits", target="z")]  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        Notifications(specs, plugins=plugins).send("generation-failed", "web g2 failed")
    failed = {entry["kind"]: entry["error"] for entry in logs if entry["event"] == "notify_failed"}
    assert failed["hangs"] == "no delivery within 1s; abandoned"
    assert failed["crashes"] == "ValueError raised by the notifier"
    assert failed["exits"] == "SystemExit raised by the notifier"
    assert "TOKEN" not in repr(logs)
