"""A TCP proxy on loopback that can delay, cut and black-hole connections (issue 16).

Sits between one daemon and etcd. Modes: `pass` (forward), `delay` (every chunk is
held `delay` seconds before it is forwarded, both ways), `cut` (open connections are
closed and new ones refused at once), `blackhole` (connections are accepted and
nothing is ever forwarded or answered). The mode can change at any time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

MODES = ("pass", "delay", "cut", "blackhole")


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.delay = 0.0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}"

    def set(self, mode: str, *, delay: float = 0.0) -> None:
        assert mode in MODES, mode
        self.mode, self.delay = mode, delay
        if mode in ("cut", "blackhole"):
            self._close_all()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._close_all()
        self._thread.join(timeout=5)

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == "cut":
                client.close()
                continue
            with self._lock:
                self._open.append(client)
            if self.mode == "blackhole":
                continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue  # swallowed
                if self.mode == "delay":
                    time.sleep(self.delay)
                if self.mode == "cut":
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()
