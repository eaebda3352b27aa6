"""The repository the daemon follows: a token in its URL never shows (logs in both
formats, status, the ledger file), git's whole error is reported, and a local mirror
owned by another user (the daemon runs as systemd's DynamicUser) is fetched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import FetchFailed
from reconciler.service.gitsource import GitSource
from tests.support.desired_builder import git_commit

TOKEN = "ghp_CANARY7x9TOKEN"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_token_in_the_repository_url_never_shows(tmp_path: Path, log_format: str) -> None:
    state = tmp_path / "state"
    repo = f"http://deploy:{TOKEN}@127.0.0.1:{_closed_port()}/desired.git?access_token={TOKEN}"
    base = [sys.executable, "-m", "reconciler", "--state-dir", str(state)]
    daemon = subprocess.run(
        [*base, "--log-format", log_format, "daemon", "--repo", repo, "--once",
         "--fetch-timeout", "5s"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    status = subprocess.run([*base, "status"], capture_output=True, text=True, timeout=60)
    status_json = subprocess.run(
        [*base, "status", "--json"], capture_output=True, text=True, timeout=60
    )

    assert daemon.returncode == 1
    assert "fetch_failed" in daemon.stderr and "[redacted]" in daemon.stderr
    for output in (daemon.stdout, daemon.stderr, status.stdout, status.stderr,
                   status_json.stdout, status_json.stderr):  # fmt: skip
        assert TOKEN not in output
    for path in state.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def _bare_repo_owned_by_another_user(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "README").write_text("desired state\n")
    git_commit(work, "first")
    bare = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    for path in [bare, *bare.rglob("*")]:
        os.lchown(path, 12345, 12345)
    return bare


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_local_mirror_owned_by_another_user_is_fetched(tmp_path: Path, form: str) -> None:
    bare = _bare_repo_owned_by_another_user(tmp_path)
    remote = str(bare) if form == "path" else f"file://{bare}"
    source = GitSource(remote, branch="main", workdir=tmp_path / "checkout", timeout=60)

    head = source.fetch()

    assert len(head) == 40


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_git_reports_its_whole_error(tmp_path: Path) -> None:
    bare = _bare_repo_owned_by_another_user(tmp_path)
    source = GitSource(str(bare), branch="no-such-branch", workdir=tmp_path / "c", timeout=60)
    with pytest.raises(FetchFailed) as caught:
        source.fetch()
    assert "no-such-branch" in str(caught.value)
