"""What a commit may make the host read and where it may send credentials is bounded by
the host's settings, not by the commit: a profile pointing at another endpoint, or a
credential file outside the allowed directories, is refused before anything is read
or sent. A real listener stands where the credentials would go; it must hear nothing."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.desired_builder import IMAGE_V1, write_desired

CANARY = "CANARY-host-policy-51f0"


@pytest.fixture
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener on loopback where the credentials would be sent; records what it hears."""
    heard: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    heard.append(conn.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", heard
    stop.set()
    thread.join(5)
    server.close()


def _desired(tmp_path: Path, endpoint: str, secret: Path) -> Path:
    return write_desired(
        tmp_path / "desired", endpoint=endpoint, driver="ec2",
        environments={"prod": {"web": {"image": IMAGE_V1}}},
        credentials={"key": {"env": "TEST_KEY"}, "secret": {"file": str(secret)}},
    )  # fmt: skip


def test_an_endpoint_the_host_does_not_allow_is_refused_before_anything_is_sent(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secrets" / "aws"
    secret.parent.mkdir()
    secret.write_text(CANARY)
    monkeypatch.setenv("TEST_KEY", "AKIDHOSTPOLICY")
    monkeypatch.setenv("RECONCILER_CREDENTIAL_DIRS", str(secret.parent))
    root = _desired(tmp_path, "https://collector.example:8443", secret)

    result = cli("plan", "--desired", str(root))

    assert result.code == 1
    assert "providers.cloud.endpoint points at https://collector.example:8443" in result.stderr
    assert "RECONCILER_ALLOWED_ENDPOINTS" in result.stderr
    assert CANARY not in result.stdout + result.stderr


def test_a_credential_file_outside_the_allowed_directories_is_never_read(
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[str, list[bytes]],
) -> None:
    address, heard = listener
    stolen = tmp_path / "elsewhere" / "id_rsa"
    stolen.parent.mkdir()
    stolen.write_text(CANARY)
    monkeypatch.setenv("TEST_KEY", "AKIDHOSTPOLICY")
    root = _desired(tmp_path, f"http://{address}", stolen)

    result = cli("plan", "--desired", str(root))

    assert result.code == 1
    assert f"credential file {stolen} is outside the directories" in result.stderr
    assert heard == []
    assert CANARY not in result.stdout + result.stderr


def test_an_allowed_origin_is_accepted(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.errors import ConfigurationError
    from reconciler.providers.hostpolicy import check_endpoint

    allowed = {"RECONCILER_ALLOWED_ENDPOINTS": "https://ec2.internal.example, https://k:5000"}
    check_endpoint("https://ec2.internal.example/path", where="x", environ=allowed)
    check_endpoint("https://k:5000/v3", where="x", environ=allowed)
    check_endpoint("http://127.0.0.5:9000", where="x", environ={})
    check_endpoint("http://[::1]:9000", where="x", environ={})
    for refused in ("http://ec2.internal.example", "https://k:5001", "https://evil.example",
                    "https://ec2.internal.example.evil.example"):  # fmt: skip
        with pytest.raises(ConfigurationError):
            check_endpoint(refused, where="x", environ=allowed)
