"""Tests for the systemd integration: the notify protocol against a real datagram
socket of the test's own, the watchdog's pacing, and the unit file through
`systemd-analyze verify`.

Timing tests use small real times and bounds derived from the measured elapsed
time, so a slow, loaded machine makes them pass with fewer pings, never fail.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.desired import load_desired_state
from reconciler.providers.credentials import resolve_secret
from reconciler.service.systemd import Notifier, Watchdog

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "reconciler.service"
ENV_EXAMPLE = ROOT / "systemd" / "reconciler.env.example"
# sun_path holds 108 bytes; a long TMPDIR would not fit.
MAX_SOCKET_PATH = 100


class Receiver:
    """The systemd side: a bound AF_UNIX datagram socket collecting notifications."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as it would appear in $NOTIFY_SOCKET

    def messages(self) -> list[str]:
        """Everything queued so far. A datagram send to a Unix socket is queued before
        sendto() returns, so nothing is still on its way when this runs."""
        received = []
        self.sock.setblocking(False)
        while True:
            try:
                received.append(self.sock.recv(65536).decode("utf-8"))
            except BlockingIOError:
                return received


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    directory = tmp_path
    if len(str(tmp_path / "notify")) > MAX_SOCKET_PATH:
        directory = Path(tempfile.mkdtemp(prefix="rcn-"))
    path = directory / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Receiver(sock, str(path))
    if directory != tmp_path:
        shutil.rmtree(directory, ignore_errors=True)


def notifier_for(receiver: Receiver) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": receiver.address})


# ---------------------------------------------------------------- Notifier


def test_ready_stopping_watchdog_are_sent_exactly(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.enabled
    notifier.ready("loaded 2 environments")
    notifier.ready()
    notifier.watchdog()
    notifier.status("run 7 ok: 0 changes")
    notifier.stopping("stopping after run 7")
    notifier.stopping()
    assert receiver.messages() == [
        "READY=1\nSTATUS=loaded 2 environments",
        "READY=1",
        "WATCHDOG=1",
        "STATUS=run 7 ok: 0 changes",
        "STOPPING=1\nSTATUS=stopping after run 7",
        "STOPPING=1",
    ]


def test_status_is_one_line(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    notifier.status("run failed:\nproduction.yaml:3: bad\r\nREADY=1")
    notifier.ready("a\nb")
    # A newline in the text must not become a field of its own (READY=1 here).
    assert receiver.messages() == [
        "STATUS=run failed: production.yaml:3: bad READY=1",
        "READY=1\nSTATUS=a b",
    ]


def test_undecodable_text_is_replaced_not_raised(receiver: Receiver) -> None:
    notifier_for(receiver).status("cannot read /srv/\udcff.yaml")
    assert receiver.messages() == ["STATUS=cannot read /srv/?.yaml"]


def test_send_joins_fields_with_newlines(receiver: Receiver) -> None:
    notifier_for(receiver).send("RELOADING=1", "STATUS=reloading")
    assert receiver.messages() == ["RELOADING=1\nSTATUS=reloading"]


def test_abstract_namespace_socket() -> None:
    name = f"reconciler-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        receiver = Receiver(sock, "@" + name)
        notifier_for(receiver).ready("up")
        assert receiver.messages() == ["READY=1\nSTATUS=up"]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative"}])
def test_without_a_usable_socket_it_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    notifier.ready("up")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()


def test_vanished_socket_does_not_raise(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    receiver.sock.close()
    Path(receiver.address).unlink()
    notifier.ready("up")  # ENOENT
    Path(receiver.address).write_text("not a socket")
    notifier.watchdog()  # ECONNREFUSED
    Notifier("/nonexistent-dir/notify").stopping()
    Notifier("@" + uuid.uuid4().hex).watchdog()  # nobody bound to that name


# ---------------------------------------------------------------- Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_interval_is_half_of_watchdog_usec() -> None:
    notifier = Notifier()
    assert Watchdog(notifier, {"WATCHDOG_USEC": "120000000"}).interval == 60.0
    own = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    assert Watchdog(notifier, own).interval == pytest.approx(0.1)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)},
        {"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "me"},
    ],
    ids=["unset", "empty", "not-a-number", "zero", "negative", "other-pid", "bad-pid"],
)
def test_watchdog_disabled(environ: dict[str, str], receiver: Receiver) -> None:
    watchdog = Watchdog(notifier_for(receiver), environ)
    assert watchdog.interval is None
    assert not watchdog.enabled
    watchdog.beat()
    assert watchdog.sleep(0.01) is False
    assert receiver.messages() == []


def test_beat_is_rate_limited(receiver: Receiver) -> None:
    clock = FakeClock()
    watchdog = Watchdog(notifier_for(receiver), {"WATCHDOG_USEC": "10000000"}, clock=clock)
    assert watchdog.interval == 5.0
    watchdog.beat()  # the first call always pings
    watchdog.beat()
    clock.now += 4.9
    watchdog.beat()
    assert receiver.messages() == ["WATCHDOG=1"]
    clock.now += 0.1  # 5.0 since the last ping
    watchdog.beat()
    watchdog.beat()
    assert receiver.messages() == ["WATCHDOG=1"]
    clock.now += 100
    watchdog.beat()
    assert receiver.messages() == ["WATCHDOG=1"]


def test_sleep_beats_while_waiting(receiver: Receiver) -> None:
    watchdog = Watchdog(notifier_for(receiver), {"WATCHDOG_USEC": "200000"})
    started = time.monotonic()
    assert watchdog.sleep(1.0) is False
    elapsed = time.monotonic() - started
    pings = receiver.messages()
    assert set(pings) == {"WATCHDOG=1"}
    assert elapsed >= 1.0
    # About ten pings on an idle machine; never more than the rate limit allows, and
    # a loaded machine would have to stall for most of the second to get under three.
    assert 3 <= len(pings) <= elapsed / 0.1 + 1


def test_sleep_returns_early_when_woken(receiver: Receiver) -> None:
    watchdog = Watchdog(notifier_for(receiver), {"WATCHDOG_USEC": "200000"})
    wake = threading.Event()
    timer = threading.Timer(0.3, wake.set)
    started = time.monotonic()
    timer.start()
    try:
        assert watchdog.sleep(60, wake=wake) is True
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30
    assert receiver.messages()  # it kept beating while it waited


def test_sleep_returns_at_once_when_already_woken() -> None:
    wake = threading.Event()
    wake.set()
    started = time.monotonic()
    assert Watchdog(Notifier(), {}).sleep(60, wake=wake) is True
    assert Watchdog(Notifier(), {"WATCHDOG_USEC": "200000"}).sleep(60, wake=wake) is True
    assert time.monotonic() - started < 30


def test_disabled_watchdog_sleeps_in_one_piece_and_can_be_woken() -> None:
    watchdog = Watchdog(Notifier(), {})
    assert watchdog.sleep(0.05) is False
    wake = threading.Event()
    timer = threading.Timer(0.2, wake.set)
    started = time.monotonic()
    timer.start()
    try:
        assert watchdog.sleep(60, wake=wake) is True
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30


def test_sleep_with_a_fake_clock_still_ends(receiver: Receiver) -> None:
    # The injected clock paces pings only; the wait itself is real.
    watchdog = Watchdog(notifier_for(receiver), {"WATCHDOG_USEC": "200000"}, clock=FakeClock())
    assert watchdog.sleep(0.2) is False
    assert receiver.messages() == ["WATCHDOG=1"]


# ---------------------------------------------------------------- unit file


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_declares_the_service_contract() -> None:
    settings = unit_settings()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["120"],
        "Restart": ["on-failure"],
        "StateDirectory": ["reconciler"],
        "StateDirectoryMode": ["0700"],
        "DynamicUser": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "SystemCallFilter": ["@system-service"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "EnvironmentFile": ["/etc/reconciler/reconciler.env"],
        "LoadCredential": [
            "aws_key:/etc/reconciler/credentials/aws_key",
            "aws_secret:/etc/reconciler/credentials/aws_secret",
        ],
        "WantedBy": ["multi-user.target"],
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert not any(key.startswith("ExecReload") for key in settings)  # SIGHUP wakes a pass


def test_env_example_names_every_daemon_option_and_nothing_unknown() -> None:
    """The unit takes every option from the environment file (RECONCILER_REPO, ...):
    the example names each daemon option's variable, and only variables that exist."""
    import click

    from reconciler.cli import cli

    (exec_start,) = unit_settings()["ExecStart"]
    assert exec_start.split()[-1] == "daemon" and "$" not in exec_start
    daemon = cli.commands["daemon"]
    options = [p for p in [*cli.params, *daemon.params] if isinstance(p, click.Option)]
    envvars = {str(p.envvar) for p in options if p.envvar}
    unsettable = {p.name for p in daemon.params if isinstance(p, click.Option) and not p.envvar}
    assert unsettable <= {"once", "help"}, "every daemon option can come from the environment"
    host = {"RECONCILER_ALLOWED_ENDPOINTS", "RECONCILER_CREDENTIAL_DIRS"}
    lines = ENV_EXAMPLE.read_text().splitlines()
    named = {m for line in lines for m in re.findall(r"^#?(RECONCILER_\w+)=", line)}
    defined = {line.partition("=")[0] for line in lines if line and not line.startswith("#")}
    assert envvars - {"RECONCILER_LOG_FORMAT"} <= named
    assert named <= envvars | host, named - envvars - host
    assert {"RECONCILER_REPO", "RECONCILER_BRANCH", "RECONCILER_PATH"} <= defined
    assert "RECONCILER_METRICS_ADDR" in named


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); CI installs it")
    # verify checks that ExecStart's binary exists and is executable, so point it at
    # this checkout's console script. EnvironmentFile= and LoadCredential= sources are
    # read only when the service starts, so verify needs neither.
    binary = Path(sys.executable).parent / "reconciler"
    assert os.access(binary, os.X_OK), f"{binary} missing: pip install -e . into this venv"
    text = UNIT.read_text()
    installed = "ExecStart=/opt/reconciler/.venv/bin/reconciler "
    assert installed in text
    unit = tmp_path / "reconciler.service"
    unit.write_text(text.replace(installed, f"ExecStart={binary} "))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    # Some hosts warn about their own units; only lines about this file count.
    ours = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr


# ---------------------------------------------------------------- credentials


def test_load_credential_reference_resolves_from_credentials_directory(tmp_path: Path) -> None:
    root = tmp_path / "desired-state"
    (root / "environments").mkdir(parents=True)
    (root / "reconciler.yaml").write_text(
        "owner: acme\n"
        "providers:\n"
        "  aws-east:\n"
        "    driver: ec2\n"
        "    region: us-east-1\n"
        "    credentials:\n"
        "      key: {file: aws_key}\n"
        "      secret: {file: aws_secret}\n"
    )
    (root / "environments" / "production.yaml").write_text(
        "provider: aws-east\nservices:\n  web: {image: ami-03cf127a, size: t3.micro}\n"
    )
    # What systemd does for LoadCredential=aws_secret:/etc/reconciler/credentials/aws_secret.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "aws_key").write_text("AKIDEXAMPLE\n")
    (credentials / "aws_secret").write_text("s3cr3t\n")
    refs = load_desired_state(root).providers["aws-east"].credentials
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert resolve_secret(refs["key"], environ) == "AKIDEXAMPLE"
    assert resolve_secret(refs["secret"], environ) == "s3cr3t"


def test_a_credential_name_without_credentials_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.errors import ConfigurationError
    from reconciler.model import SecretRef

    (tmp_path / "aws_secret").write_text("not-to-be-read\n")
    monkeypatch.chdir(tmp_path)  # a file of that name in the cwd must not be picked up
    with pytest.raises(ConfigurationError, match="CREDENTIALS_DIRECTORY is not set") as caught:
        resolve_secret(SecretRef("file", "aws_secret"), environ={})
    assert "not-to-be-read" not in str(caught.value)
