"""Shared fixtures: the sandbox EC2 endpoint (moto on loopback) and a CLI runner.

The sandbox is started once per session and reset before each test, so every test
sees an empty cloud and a zeroed request counter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.providers.sandbox import SandboxServer, fetch_stats, reset_sandbox

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer().start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    reset_sandbox(sandbox_server.endpoint)
    return sandbox_server


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    """Runs `python -m reconciler` as a real subprocess with its own state directory."""

    state_dir: Path
    cwd: Path

    def __call__(self, *args: str, timeout: float = 120) -> CliResult:
        # A developer's own settings stay out; the host settings a test sets stay in.
        host = ("RECONCILER_CREDENTIAL_DIRS", "RECONCILER_ALLOWED_ENDPOINTS")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_") or k in host}
        env.pop("STATE_DIRECTORY", None)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "--state-dir",
                str(self.state_dir),
                "--log-format",
                "json",
                *args,
            ],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(state_dir=tmp_path / "state", cwd=tmp_path)


def mutating_calls(endpoint: str) -> int:
    return int(fetch_stats(endpoint)["mutating"])
