"""`reconciler sandbox` and `reconciler demo` as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from reconciler.providers.sandbox import fetch_stats
from tests.conftest import REPO
from tests.support.cloud import free_port
from tests.support.desired_builder import IMAGE_V1, write_desired


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_sandbox_command_serves_ec2_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    # Its output goes to a file, not an undrained pipe: a full pipe would block the
    # server's last write at exit, and the file says what it did if it hangs.
    output = tmp_path / "sandbox.out"
    with output.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "sandbox", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_listening(port)
        endpoint = f"http://127.0.0.1:{port}"
        root = write_desired(
            tmp_path / "d",
            endpoint=endpoint,
            environments={"dev": {"app": {"image": IMAGE_V1, "count": 2}}},
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "--state-dir",
                str(tmp_path / "s"),
                "apply",
                "--desired",
                str(root),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["counts"] == {"create": 2, "activate": 1}
        assert fetch_stats(endpoint)["calls"]["RunInstances"] == 2
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            said = output.read_text()[-2000:]
            raise AssertionError(f"sandbox did not stop on SIGINT: {said}") from None
    assert server.returncode == 0, output.read_text()[-2000:]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is released"


def test_demo_runs_start_to_finish(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY",)}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "demo", "--fast"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for heading in (
        "1. Apply from empty",
        "2. Deploy a new image",
        "3. Heal drift",
        "4. The ledger",
    ):
        assert heading in out
    assert "create production/web g2 #1 [spec-changed]" in out
    assert "[missing]" in out
    assert re.search(r"production/web g1\s+standby", out)
    assert re.search(r"production/web g2\s+active", out)


def test_the_sandbox_without_its_extra_names_the_extra_to_install(tmp_path: Path) -> None:
    # The README's service install has no sandbox extra: moto cannot be imported.
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['moto'] = None\n"  # `import moto...` raises ImportError
    )
    root = write_desired(tmp_path / "d", endpoint="", environments={
        "prod": {"web": {"image": IMAGE_V1}}})  # fmt: skip
    config = (root / "reconciler.yaml").read_text().replace("    endpoint: ''\n", "")
    (root / "reconciler.yaml").write_text(config)
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "s"), "plan",
         "--desired", str(root)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'reconciler[sandbox]'" in done.stderr
