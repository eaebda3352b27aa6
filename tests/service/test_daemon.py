"""The daemon as a real subprocess: a bare git repository as its remote, a notify
socket of the test's own, the sandbox EC2 endpoint, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from tests.support.cloud import live_nodes, raw_driver
from tests.support.daemon_support import (
    DaemonProcess,
    HangingServer,
    NotifySocket,
    Remote,
    wait_for,
)
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2

WEB_V1 = {"prod": {"web": {"image": IMAGE_V1, "count": 2}}}
WEB_V2 = {"prod": {"web": {"image": IMAGE_V2, "count": 2}}}


@pytest.fixture
def remote(tmp_path: Path, sandbox: SandboxServer) -> Remote:
    return Remote(tmp_path, sandbox.endpoint)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.stop()


def start(
    daemons: list[DaemonProcess], tmp_path: Path, repo: str, name: str = "daemon", **kw: Any
) -> DaemonProcess:
    process = DaemonProcess(
        state_dir=tmp_path / "state", repo=repo, log_path=tmp_path / f"{name}.log", **kw
    )
    daemons.append(process)
    return process


def generation_states(state_dir: Path, service: str = "web") -> dict[int, str]:
    with Ledger.open(state_dir) as ledger:
        return {
            row["number"]: row["state"]
            for row in ledger.generation_rows(env="prod", service=service)
        }


def events(state_dir: Path, kind: str) -> list[dict[str, Any]]:
    with Ledger.open(state_dir) as ledger:
        return ledger.event_rows(kind=kind)


def runs(state_dir: Path) -> list[dict[str, Any]]:
    with Ledger.open(state_dir) as ledger:
        return ledger.run_rows()


def test_ready_then_pushed_image_bump_becomes_a_new_generation(
    tmp_path: Path, remote: Remote, notify: NotifySocket, daemons: list[DaemonProcess]
) -> None:
    remote.push(WEB_V1, "web v1")
    daemon = start(daemons, tmp_path, str(remote.bare), notify=notify)
    wait_for(lambda: notify.count("READY=1"), what="READY=1")
    state = tmp_path / "state"
    wait_for(lambda: generation_states(state) == {1: "active"}, what="generation 1 active")

    last_run_before_push = max(r["id"] for r in runs(state))
    sha = remote.push(WEB_V2, "web v2")
    wait_for(lambda: generation_states(state) == {1: "standby", 2: "active"}, what="gen 2")

    activated = [e for e in events(state, "generation_activated") if e["generation"] == 2]
    # The first pass that starts after the push may have fetched just before it: the
    # new generation comes at the latest from the second pass after the push.
    assert activated[0]["run"] <= last_run_before_push + 2
    with Ledger.open(state) as ledger:
        history = {r["number"]: r for r in ledger.history_rows(env="prod", service="web")}
    assert history[2]["commit"] == sha
    assert history[2]["commit_author"] == "test <test@example.invalid>"
    assert history[2]["commit_subject"] == "web v2"
    assert any(s.startswith("run ") for s in notify.fields("STATUS"))

    assert daemon.stop() == 0
    assert notify.count("STOPPING=1") == 1


def test_invalid_commit_is_not_applied_while_drift_is_still_healed(
    tmp_path: Path,
    remote: Remote,
    sandbox: SandboxServer,
    notify: NotifySocket,
    daemons: list[DaemonProcess],
) -> None:
    events_file = tmp_path / "notifications.jsonl"
    notifier = {"command": f"sh -c 'cat >> {events_file}; echo >> {events_file}'"}
    remote.push(WEB_V1, "web v1", notifiers=[notifier])
    start(daemons, tmp_path, str(remote.bare), notify=notify)
    state = tmp_path / "state"
    wait_for(lambda: generation_states(state) == {1: "active"}, what="generation 1")

    bad = remote.push_file(
        "environments/prod.yaml",
        f"provider: cloud\nservices:\n  web:\n    image: {IMAGE_V2}\n    count: -1\n",
        "broken: negative count",
    )
    wait_for(lambda: events(state, "invalid_commit"), what="invalid commit recorded")
    victim = next(n for n in live_nodes(sandbox.endpoint))
    raw_driver(sandbox.endpoint).destroy_node(victim)

    def healed() -> bool:
        alive = live_nodes(sandbox.endpoint)
        return len(alive) == 2 and victim.id not in {n.id for n in alive}

    wait_for(healed, what="the terminated instance replaced")
    assert generation_states(state) == {1: "active"}
    alive = live_nodes(sandbox.endpoint)
    assert {n.extra["image_id"] for n in alive} == {IMAGE_V1}, "healed against the last good"
    assert {n.extra["tags"]["reconciler:generation"] for n in alive} == {"1"}

    event = events(state, "invalid_commit")[0]["detail"]
    assert event["commit"] == bad
    sent = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    invalid = [n for n in sent if n["kind"] == "invalid-commit"]
    assert len(invalid) == 1 and invalid[0]["commit"] == bad
    assert "services.web.count" in invalid[0]["text"]
    assert any("services.web.count" in e for e in event["errors"])
    status = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(state), "status", "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    document = json.loads(status.stdout)
    assert document["invalid_commit"]["sha"] == bad
    assert document["services"] == [{
        "env": "prod", "service": "web", "state": "ok", "active": 1, "standby": [],
        "image": IMAGE_V1, "desired": 2, "running": 2, "held": [],
        "ready": None, "ready_image": None, "behind": [],
    }]  # fmt: skip


def test_watchdog_keeps_beating_while_the_git_remote_hangs(
    tmp_path: Path, notify: NotifySocket, daemons: list[DaemonProcess]
) -> None:
    hanging = HangingServer()
    try:
        daemon = start(
            daemons, tmp_path, f"http://127.0.0.1:{hanging.port}/desired.git",
            notify=notify, watchdog_usec=1_000_000, extra=("--fetch-timeout", "3s"),
        )  # fmt: skip
        wait_for(lambda: notify.count("READY=1"), what="READY=1")
        ready_at = notify.messages[0][0]
        wait_for(lambda: "timed out after 3s" in daemon.log(), timeout=60, what="fetch timeout")
        # During the 3 s the fetch hung, pings went on every half second or so.
        assert notify.count("WATCHDOG=1", since=ready_at) >= 3
        assert '"event": "fetch_failed"' in daemon.log()
        assert any("git fetch failed" in s for s in notify.fields("STATUS"))
        assert runs(tmp_path / "state") == [], "a skipped pass applies nothing"
        assert daemon.stop() == 0
    finally:
        hanging.close()


def test_second_daemon_on_the_same_state_is_refused(
    tmp_path: Path, remote: Remote, notify: NotifySocket, daemons: list[DaemonProcess]
) -> None:
    remote.push(WEB_V1, "web v1")
    first = start(daemons, tmp_path, str(remote.bare), notify=notify)
    wait_for(lambda: notify.count("READY=1"), what="READY=1")
    second = start(daemons, tmp_path, str(remote.bare), name="second")
    assert second.wait(timeout=60) == 1
    assert f"pid {first.process.pid}" in second.log()
    apply = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"), "apply",
         "--desired", str(remote.work / "desired")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert apply.returncode == 1
    assert f"pid {first.process.pid}" in apply.stderr
    assert first.process.poll() is None


def test_sigterm_during_apply_exits_zero_and_the_next_start_finishes_the_work(
    tmp_path: Path,
    remote: Remote,
    sandbox: SandboxServer,
    notify: NotifySocket,
    daemons: list[DaemonProcess],
) -> None:
    count = 80
    remote.push(
        {"prod": {"web": {"image": IMAGE_V1, "count": count}}}, "big fleet",
        policy={"max_count": 100},
    )  # fmt: skip
    daemon = start(daemons, tmp_path, str(remote.bare), notify=notify)
    wait_for(lambda: '"instance_created"' in daemon.log(), what="the first launch")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    assert notify.count("STOPPING=1") == 1
    state = tmp_path / "state"
    first_run = runs(state)[0]
    assert first_run["result"] == "interrupted", first_run
    launched = len(live_nodes(sandbox.endpoint))
    assert 0 < launched < count

    again = start(daemons, tmp_path, str(remote.bare), name="again", extra=("--once",))
    assert again.wait(timeout=240) == 0, again.log()
    nodes = live_nodes(sandbox.endpoint)
    names = sorted(n.extra["tags"]["Name"] for n in nodes)
    assert names == sorted(f"prod-web-g1-{n}" for n in range(1, count + 1)), "no duplicates"
    assert generation_states(state) == {1: "active"}
    with Ledger.open(state) as ledger:
        assert ledger.open_operations() == []


def test_rewound_branch_is_refused_unless_allowed(
    tmp_path: Path, remote: Remote, daemons: list[DaemonProcess]
) -> None:
    remote.push(WEB_V1, "web v1")
    state = tmp_path / "state"
    first = start(daemons, tmp_path, str(remote.bare), extra=("--once",))
    assert first.wait() == 0
    rewritten = remote.rewrite_history(WEB_V2, "rewritten history")

    refused = start(daemons, tmp_path, str(remote.bare), name="refused", extra=("--once",))
    assert refused.wait() == 0  # healing against the last applied commit still succeeds
    assert '"event": "history_rewritten"' in refused.log()
    assert generation_states(state) == {1: "active"}
    assert events(state, "history_rewritten")[0]["detail"]["head"] == rewritten

    allowed = start(
        daemons, tmp_path, str(remote.bare), name="allowed", extra=("--once", "--allow-rewind")
    )
    assert allowed.wait() == 0
    assert generation_states(state) == {1: "standby", 2: "active"}


def test_sighup_wakes_the_loop_for_an_immediate_pass(
    tmp_path: Path, remote: Remote, notify: NotifySocket, daemons: list[DaemonProcess]
) -> None:
    remote.push(WEB_V1, "web v1")
    daemon = start(daemons, tmp_path, str(remote.bare), notify=notify, interval="1h")
    state = tmp_path / "state"
    wait_for(lambda: generation_states(state) == {1: "active"}, what="generation 1")
    remote.push(WEB_V2, "web v2")
    time.sleep(1)
    assert generation_states(state) == {1: "active"}, "nothing happens before the interval"
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: generation_states(state) == {1: "standby", 2: "active"}, what="gen 2")


def test_a_canary_secret_never_leaks(
    tmp_path: Path, remote: Remote, sandbox: SandboxServer, daemons: list[DaemonProcess]
) -> None:
    canary = "CANARY-s3cr3t-9b1e77"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "aws_secret").write_text(canary + "\n")
    remote.push(
        WEB_V1, "real ec2 driver", driver="ec2",
        credentials={"key": {"env": "TEST_AWS_KEY"}, "secret": {"file": "aws_secret"}},
    )  # fmt: skip
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "TEST_AWS_KEY": "AKIDCANARYKEY"}
    daemon = start(daemons, tmp_path, str(remote.bare), env=env, extra=("--once",))
    assert daemon.wait(timeout=120) == 0, daemon.log()
    assert len(live_nodes(sandbox.endpoint)) == 2

    # A failing pass (the key is gone) must not leak the secret in its error either.
    broken = start(daemons, tmp_path, str(remote.bare), name="broken",
                   env={"CREDENTIALS_DIRECTORY": str(credentials)}, extra=("--once",))  # fmt: skip
    assert broken.wait(timeout=120) == 1
    assert "TEST_AWS_KEY is not set" in broken.log()

    debug = start(daemons, tmp_path, str(remote.bare), name="debug",
                  env={**env, "LIBCLOUD_DEBUG": "/dev/stderr"}, extra=("--once",))  # fmt: skip
    assert debug.wait(timeout=60) == 1
    assert "LIBCLOUD_DEBUG" in debug.log()

    for log in tmp_path.glob("*.log"):
        assert canary not in log.read_text(), log.name
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert canary.encode() not in path.read_bytes(), path
    for node in live_nodes(sandbox.endpoint):
        assert canary not in json.dumps(node.extra, default=str)
    assert os.environ.get("TEST_AWS_KEY") is None


def test_metrics_endpoint_reports_runs_generations_api_calls_and_cost(
    tmp_path: Path, remote: Remote, daemons: list[DaemonProcess]
) -> None:
    import re
    import urllib.request

    from tests.support.cloud import free_port

    remote.push(WEB_V1, "web v1")
    port = free_port()
    start(daemons, tmp_path, str(remote.bare), extra=("--metrics-addr", f"127.0.0.1:{port}"))
    state = tmp_path / "state"
    wait_for(lambda: generation_states(state) == {1: "active"}, what="generation 1")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def value(text: str, name: str) -> float | None:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    def counted() -> str | None:
        text = scrape()
        return text if value(text, 'reconciler_runs_total{result="changes"}') else None

    text = wait_for(counted, what="a counted run")
    assert value(text, 'reconciler_active_generation{env="prod",service="web"}') == 1
    assert (
        value(text, 'reconciler_cloud_api_calls_total{action="RunInstances",provider="cloud"}') == 2
    )
    assert value(text, "reconciler_hourly_cost_dollars") == pytest.approx(2 * 0.0104)
    assert value(text, 'reconciler_drift_total{reason="spec-changed"}') == 2
    assert (value(text, "reconciler_last_success_timestamp_seconds") or 0) > 0
    assert "reconciler_pass_duration_seconds_count" in text
