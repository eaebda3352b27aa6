"""Signed commits (issue 17): real git, real ssh-keygen and gpg keys in temporary homes.

The verification is the daemon's own (reconciler.trust.verify), run against a
repository built here; the end-to-end test runs the daemon with --verify-commits
against the sandbox and checks the cloud was not touched by an untrusted commit.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.errors import ConfigurationError
from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from reconciler.trust.signers import load_trusted_signers
from reconciler.trust.verify import untrusted, verify
from tests.conftest import mutating_calls
from tests.support.bluegreen_support import WebhookReceiver
from tests.support.cloud import free_port, live_nodes
from tests.support.daemon_support import DaemonProcess, wait_for
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired
from tests.support.hostile_corpus import HOSTILE
from tests.support.signing import Keys, git, tamper

HOOK_SECRET = "signed-commits-hook-secret-4417"

pytestmark = pytest.mark.skipif(
    not (shutil.which("gpg") and shutil.which("ssh-keygen")), reason="needs gpg and ssh-keygen"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    keys = Keys(tmp_path_factory.mktemp("keys"))
    yield keys
    keys.close()


@pytest.fixture
def repo(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, keys.env(), "init", "-q", "-b", "main")
    return path


def change(repo: Path, name: str) -> None:
    (repo / name).write_text(name + "\n")


def check(repo: Path, keys: Keys, tmp_path: Path, *, mode: str, since: list[str] | None = None,
          **signers: bool) -> list[Any]:  # fmt: skip
    trusted = load_trusted_signers(keys.signers_file(**signers), tmp_path / "trust")
    return verify(repo, "HEAD", trusted, mode=mode, since=since or [])


@pytest.mark.parametrize("by", ["ssh", "pgp"])
def test_a_commit_signed_by_a_trusted_key_is_trusted(
    repo: Path, keys: Keys, tmp_path: Path, by: str
) -> None:
    change(repo, "a")
    sha = keys.commit(repo, "signed", by=by)
    [verdict] = check(repo, keys, tmp_path, mode="head")
    assert verdict.sha == sha and verdict.trusted, verdict
    assert verdict.signature.key_type == ("ssh" if by == "ssh" else "openpgp")
    if by == "pgp":
        assert verdict.signature.primary == keys.pgp


@pytest.mark.parametrize(
    ("by", "why"),
    [
        ("none", "not signed"),
        ("stranger", "not in the trusted-signers file"),
    ],
)
def test_a_commit_not_signed_by_a_trusted_key_is_refused(
    repo: Path, keys: Keys, tmp_path: Path, by: str, why: str
) -> None:
    change(repo, "a")
    keys.commit(repo, "x", by=by)
    [verdict] = check(repo, keys, tmp_path, mode="head")
    assert not verdict.trusted and why in verdict.why


def test_an_ssh_key_known_only_to_git_config_is_not_trusted(
    repo: Path, keys: Keys, tmp_path: Path
) -> None:
    """The trusted-signers file decides, not the repository's own configuration."""
    change(repo, "a")
    keys.commit(repo, "by a stranger", by="stranger")
    widened = tmp_path / "repo-allowed"
    widened.write_text(keys.allowed_line(keys.stranger, "eve@example.com") + "\n")
    git(repo, keys.env(), "config", "gpg.ssh.allowedSignersFile", str(widened))
    [verdict] = check(repo, keys, tmp_path, mode="head")
    assert not verdict.trusted


def test_a_commit_changed_after_signing_is_refused(repo: Path, keys: Keys, tmp_path: Path) -> None:
    change(repo, "a")
    keys.commit(repo, "signed then changed", by="ssh")
    tamper(repo, keys.env())
    [verdict] = check(repo, keys, tmp_path, mode="head")
    assert not verdict.trusted and verdict.signature.status in ("B", "E"), verdict


def test_an_expired_openpgp_key_is_refused(repo: Path, keys: Keys, tmp_path: Path) -> None:
    change(repo, "a")
    keys.commit(repo, "signed by a key about to expire", by="expiring")
    keys.wait_expired()
    [verdict] = check(repo, keys, tmp_path, mode="head", expiring=True)
    assert not verdict.trusted and "expired" in verdict.why, verdict


def test_an_unsigned_commit_under_a_signed_head(repo: Path, keys: Keys, tmp_path: Path) -> None:
    change(repo, "a")
    base = keys.commit(repo, "base", by="ssh")
    change(repo, "b")
    sneaked = keys.commit(repo, "unsigned, underneath", by="none")
    change(repo, "c")
    keys.commit(repo, "signed head", by="ssh")
    strict = check(repo, keys, tmp_path, mode="strict", since=[base])
    assert [v.sha for v in untrusted(strict)] == [sneaked]
    assert len(strict) == 2  # the base is not judged again
    head = check(repo, keys, tmp_path, mode="head")
    assert not untrusted(head)


def test_an_unsigned_merge_commit_is_refused(repo: Path, keys: Keys, tmp_path: Path) -> None:
    change(repo, "a")
    base = keys.commit(repo, "base", by="ssh")
    git(repo, keys.env(), "checkout", "-q", "-b", "feature")
    change(repo, "f")
    keys.commit(repo, "feature", by="ssh")
    git(repo, keys.env(), "checkout", "-q", "main")
    change(repo, "m")
    keys.commit(repo, "main moves", by="ssh")
    git(repo, keys.env(), "merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "web UI merge",
        "feature")  # fmt: skip
    for mode in ("strict", "head"):
        refused = untrusted(check(repo, keys, tmp_path, mode=mode, since=[base]))
        assert [v.signature.subject for v in refused] == ["web UI merge"], mode
        assert refused[0].signature.parents == 2


@pytest.mark.parametrize("content", [None, "", "# only a comment\n", b"\xff\xfe"])
def test_a_trusted_signers_file_that_cannot_be_used_refuses(
    tmp_path: Path, content: str | bytes | None
) -> None:
    path = tmp_path / "trusted-signers"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match="--trusted-signers"):
        load_trusted_signers(path, tmp_path / "trust")


def test_verify_command_checks_a_range_with_the_same_code(
    repo: Path, keys: Keys, tmp_path: Path, cli: Any
) -> None:
    change(repo, "a")
    base = keys.commit(repo, "base", by="ssh")
    change(repo, "b")
    keys.commit(repo, "signed", by="pgp")
    signers = str(keys.signers_file())
    ok = cli("verify", "--repo", str(repo), "--range", f"{base}..HEAD",
             "--trusted-signers", signers, "--json")  # fmt: skip
    assert ok.code == 0, ok.stderr
    assert [r["trusted"] for r in json.loads(ok.stdout)] == [True]
    change(repo, "c")
    keys.commit(repo, "unsigned", by="none")
    bad = cli("verify", "--repo", str(repo), "--range", f"{base}..HEAD",
              "--trusted-signers", signers)  # fmt: skip
    assert bad.code == 1 and "NOT TRUSTED" in bad.stdout and "not signed" in bad.stdout


# --------------------------------------------------------------------- the daemon


@pytest.fixture
def daemon_repo(tmp_path: Path, keys: Keys, sandbox: SandboxServer) -> Iterator[Path]:
    bare = tmp_path / "remote.git"
    git(tmp_path, keys.env(), "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    work.mkdir()
    git(work, keys.env(), "init", "-q", "-b", "main")
    yield work


def push(work: Path, keys: Keys, endpoint: str, image: str, *, by: str,
         notifiers: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    write_desired(work / "desired", endpoint=endpoint, notifiers=notifiers,
                  environments={"prod": {"web": {"image": image, "count": 2}}})  # fmt: skip
    sha = keys.commit(work, f"web {image} by {by}", by=by)
    git(work, keys.env(), "push", "-q", "--force", str(work.parent / "remote.git"),
        "HEAD:refs/heads/main")  # fmt: skip
    return sha


def running(endpoint: str, image: str) -> int:
    return sum(1 for n in live_nodes(endpoint) if n.extra.get("image_id") == image
               and n.state == "running")  # fmt: skip


def test_the_daemon_applies_trusted_commits_only_and_trust_lets_one_through(
    tmp_path: Path, keys: Keys, sandbox: SandboxServer, daemon_repo: Path, cli: Any
) -> None:
    signers = keys.signers_file()
    webhook = WebhookReceiver(HOOK_SECRET)
    hook = [{"webhook": webhook.url, "secret": {"env": "HOOK_SECRET"},
             "events": ["untrusted-commit"]}]  # fmt: skip
    first = push(daemon_repo, keys, sandbox.endpoint, IMAGE_V1, by="ssh", notifiers=hook)
    port = free_port()
    daemon = DaemonProcess(
        state_dir=tmp_path / "state", repo=str(tmp_path / "remote.git"),
        log_path=tmp_path / "daemon.log", interval="1s", env={"HOOK_SECRET": HOOK_SECRET},
        extra=("--verify-commits", "strict", "--trusted-signers", str(signers),
               "--metrics-addr", f"127.0.0.1:{port}"),
    )  # fmt: skip
    refused_metric = 'reconciler_head_refused{reason="untrusted"}'
    try:
        wait_for(lambda: running(sandbox.endpoint, IMAGE_V1) == 2, what="the signed commit")
        settled = mutating_calls(sandbox.endpoint)
        bad = push(daemon_repo, keys, sandbox.endpoint, IMAGE_V2, by="none", notifiers=hook)
        wait_for(lambda: "untrusted_commit" in daemon.log(), what="the refusal")
        wait_for(lambda: '"result": "no-op"' in daemon.log().split("untrusted_commit")[-1],
                 what="a pass that heals against the last good commit")  # fmt: skip
        assert mutating_calls(sandbox.endpoint) == settled  # nothing changed in the cloud
        with Ledger.open(tmp_path / "state", check="none") as ledger:
            refused = ledger.event_rows(kind="untrusted_commit")
            good = ledger.commit_row(first)
            rejected = ledger.commit_row(bad)
        assert refused[-1]["detail"]["commit"] == bad
        assert refused[-1]["detail"]["untrusted"][0]["why"] == "not signed"
        assert good is not None and good["signer_type"] == "ssh"
        assert good["signer_fingerprint"].startswith("SHA256:")
        assert rejected is not None and rejected["valid"] == 0
        status = json.loads(cli("status", "--json").stdout)
        assert status["applied_commit"]["sha"] == first
        assert status["applied_commit"]["signer"]["key_type"] == "ssh"
        assert status["invalid_commit"]["sha"] == bad
        assert "not signed" in status["invalid_commit"]["errors"][0]
        assert f"{refused_metric} 1.0" in metrics(port)
        wait_for(lambda: webhook.events, what="the untrusted-commit notification")
        assert webhook.events[0]["kind"] == "untrusted-commit"
        assert webhook.events[0]["commit"] == bad

        accepted = cli("trust", bad, "--reason", "emergency fix, signed later")
        assert accepted.code == 0, accepted.stderr
        wait_for(lambda: running(sandbox.endpoint, IMAGE_V2) == 2, what="the accepted commit")
        with Ledger.open(tmp_path / "state", check="none") as ledger:
            trusted = ledger.event_rows(kind="commit_trusted")
        assert trusted[-1]["detail"]["commit"] == bad and trusted[-1]["detail"]["by"]
        assert f"{refused_metric} 0.0" in metrics(port)

        # A force-push of an unrelated, well-signed history is a rewind: refused as such.
        shutil.rmtree(daemon_repo / ".git")
        git(daemon_repo, keys.env(), "init", "-q", "-b", "main")
        settled = mutating_calls(sandbox.endpoint)
        push(daemon_repo, keys, sandbox.endpoint, IMAGE_V1, by="ssh", notifiers=hook)
        wait_for(lambda: "history_rewritten" in daemon.log(), what="the rewind refusal")
        assert 'reconciler_head_refused{reason="rewound"} 1.0' in metrics(port)
        assert mutating_calls(sandbox.endpoint) == settled
    finally:
        daemon.stop()
        webhook.close()


def metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_the_daemon_refuses_to_start_without_a_usable_trusted_signers_file(
    tmp_path: Path, cli: Any
) -> None:
    for path in (tmp_path / "missing", tmp_path / "empty"):
        if path.name == "empty":
            path.write_text("")
        done = cli("daemon", "--repo", str(tmp_path), "--verify-commits", "strict",
                   "--trusted-signers", str(path), "--once", timeout=60)  # fmt: skip
        assert done.code == 1 and "--trusted-signers" in done.stderr, done.stderr


def test_the_daemon_refuses_each_kind_of_untrusted_commit_and_applies_openpgp(
    tmp_path: Path, keys: Keys, sandbox: SandboxServer, daemon_repo: Path
) -> None:
    """The refusal corpus, end to end: each case lands on top of the last good commit,
    is refused with its reason and nothing changed in the cloud, and the branch is put
    back; then an OpenPGP-signed commit is applied."""
    keys.expiring(fresh=True)
    signers = keys.signers_file(expiring=True)
    good = push(daemon_repo, keys, sandbox.endpoint, IMAGE_V1, by="ssh")
    # Signed now, pushed later: by then its key has expired.
    write_desired(daemon_repo / "desired", endpoint=sandbox.endpoint,
                  environments={"prod": {"web": {"image": IMAGE_V2, "count": 1}}})  # fmt: skip
    expired = keys.commit(daemon_repo, "signed by a key that expires", by="expiring")
    git(daemon_repo, keys.env(), "reset", "-q", "--hard", good)
    daemon = DaemonProcess(
        state_dir=tmp_path / "state", repo=str(tmp_path / "remote.git"),
        log_path=tmp_path / "daemon.log", interval="1s",
        extra=("--verify-commits", "strict", "--trusted-signers", str(signers)),
    )  # fmt: skip
    remote = str(tmp_path / "remote.git")

    def unsigned_merge() -> str:
        git(daemon_repo, keys.env(), "checkout", "-q", "-b", "side")
        keys.commit(daemon_repo, "side work", by="ssh")
        git(daemon_repo, keys.env(), "checkout", "-q", "main")
        keys.commit(daemon_repo, "main work", by="ssh")
        git(daemon_repo, keys.env(), "merge", "-q", "--no-ff", "--no-gpg-sign", "-m",
            "merged in the web UI", "side")  # fmt: skip
        git(daemon_repo, keys.env(), "branch", "-q", "-D", "side")
        return git(daemon_repo, keys.env(), "rev-parse", "HEAD").strip()

    def under_signed_head() -> str:
        keys.commit(daemon_repo, "unsigned, underneath", by="none")
        return keys.commit(daemon_repo, "signed on top", by="ssh")

    def tampered() -> str:
        keys.commit(daemon_repo, "signed, then changed", by="ssh")
        return tamper(daemon_repo, keys.env())

    makers = {
        "unsigned": lambda: keys.commit(daemon_repo, "unsigned", by="none"),
        "stranger": lambda: keys.commit(daemon_repo, "by eve", by="stranger"),
        "tampered": tampered,
        "expired": lambda: expired,
        "under-signed-head": under_signed_head,
        "unsigned-merge": unsigned_merge,
    }
    corpus = yaml.safe_load((HOSTILE / "commits.yaml").read_text())
    assert {case["make"] for case in corpus} == set(makers)
    cases = [(case["name"], makers[case["make"]], case["why"]) for case in corpus]
    try:
        wait_for(lambda: running(sandbox.endpoint, IMAGE_V1) == 2, what="the signed commit")
        keys.wait_expired()
        for name, make, why in cases:
            settled = mutating_calls(sandbox.endpoint)
            sha = make()
            git(daemon_repo, keys.env(), "push", "-q", "--force", remote, f"{sha}:refs/heads/main")
            wait_for(lambda s=sha: _refusal(tmp_path, s), what=f"the refusal of {name}")
            detail = _refusal(tmp_path, sha)
            assert any(why in u["why"] for u in detail["untrusted"]), (name, detail)
            time.sleep(1)  # a pass or so goes on against the last good commit
            assert mutating_calls(sandbox.endpoint) == settled, name
            git(daemon_repo, keys.env(), "reset", "-q", "--hard", good)
            git(daemon_repo, keys.env(), "push", "-q", "--force", remote, f"{good}:refs/heads/main")
        signed = push(daemon_repo, keys, sandbox.endpoint, IMAGE_V2, by="pgp")
        wait_for(lambda: running(sandbox.endpoint, IMAGE_V2) == 2, what="the OpenPGP commit")
        with Ledger.open(tmp_path / "state", check="none") as ledger:
            row = ledger.commit_row(signed)
        assert row is not None and row["signer_type"] == "openpgp"
        assert row["signer_fingerprint"] == keys.pgp
    finally:
        daemon.stop()


def _refusal(tmp_path: Path, sha: str) -> dict[str, Any] | None:
    with Ledger.open(tmp_path / "state", check="none") as ledger:
        rows = ledger.event_rows(kind="untrusted_commit")
    found = [r["detail"] for r in rows if r["detail"]["commit"] == sha]
    return found[-1] if found else None


def test_a_member_reads_its_owner_from_the_newest_trusted_commit(
    tmp_path: Path, keys: Keys, sandbox: SandboxServer, daemon_repo: Path
) -> None:
    """Under --coordination the owner names the leader key: an unsigned head must not
    move a member to another owner's key (it campaigns for the trusted commit's)."""
    from reconciler.service.daemon import DaemonSettings
    from reconciler.service.ha import CoordinatedDaemon, CoordinationSettings
    from reconciler.service.systemd import Notifier, Watchdog

    trusted = push(daemon_repo, keys, sandbox.endpoint, IMAGE_V1, by="ssh")
    write_desired(daemon_repo / "desired", endpoint=sandbox.endpoint, owner="mallory",
                  environments={"prod": {"web": {"image": IMAGE_V1}}})  # fmt: skip
    keys.commit(daemon_repo, "another owner, unsigned", by="none")
    git(daemon_repo, keys.env(), "push", "-q", "--force", str(tmp_path / "remote.git"),
        "HEAD:refs/heads/main")  # fmt: skip
    settings = DaemonSettings(repo=str(tmp_path / "remote.git"), path="desired",
                              verify_commits="strict",
                              trusted_signers=str(keys.signers_file()))  # fmt: skip
    notifier = Notifier.from_environ({})
    member = CoordinatedDaemon(
        settings, CoordinationSettings(url="etcd://127.0.0.1:2379", member="alpha"),
        state_dir=tmp_path / "state", notifier=notifier, watchdog=Watchdog(notifier, {}),
    )  # fmt: skip
    desired = member._newest_desired()
    assert desired is not None and desired.owner == "acme" and desired.commit == trusted
