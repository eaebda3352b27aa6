"""`reconciler promote` and `reconciler set-image` end to end: a real bare remote and a
checkout of it, real `apply` passes on the sandbox filling the ledger, the CLI as a
process. What is checked: the commit (one, one line, trailers), the bytes of the file,
every refusal writing no commit, the push race, and Packer's manifest."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from tests.conftest import Cli
from tests.support.bluegreen_support import HealthServer
from tests.support.daemon_support import DaemonProcess, wait_for
from tests.support.desired_builder import write_desired

V1, V2, V3 = "ami-71000001", "ami-72000002", "ami-73000003"

PRODUCTION = """\
# Production: every change here is reviewed.
provider: cloud   # the only cloud we use

services:
  web:
    # Promoted from staging; never edited by hand.
    image: "{image}"      # keep it quoted
    count: 1
    keep_previous: 10m
  api: {{image: {api}, count: 1}}   # flow style on purpose
"""


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An operator's git: a name and address, nothing from this machine's own settings.
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Ada Operator")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "ada@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


class Repo:
    """A bare remote and the operator's checkout of it: staging and production."""

    def __init__(self, root: Path, endpoint: str, health: HealthServer) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.desired = self.work / "desired"
        self.endpoint = endpoint
        self.health = health
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))
        self.write_staging(V1)
        self.production_file.write_text(PRODUCTION.format(image=V1, api=V1))
        self.commit("staging and production at v1")
        git(self.work, "push", "-q", "-u", "origin", "main")

    @property
    def production_file(self) -> Path:
        return self.desired / "environments" / "production.yaml"

    def write_staging(self, image: str, *, api: str = V1) -> None:
        production = self.production_file.read_text() if self.production_file.exists() else None
        service = {
            "image": image,
            "count": 1,
            "health": {"http": self.health.template(), "timeout": "2s", "interval": "1s"},
        }
        write_desired(
            self.desired, endpoint=self.endpoint,
            environments={"staging": {"web": service, "api": {"image": api}},
                          "production": {}},
        )  # fmt: skip
        if production is not None:
            self.production_file.write_text(production)

    def commit(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def commits(self) -> int:
        return int(git(self.work, "rev-list", "--count", "HEAD"))


@pytest.fixture
def repo(tmp_path: Path, sandbox: SandboxServer, health: HealthServer) -> Repo:
    return Repo(tmp_path, sandbox.endpoint, health)


def apply(cli: Cli, repo: Repo) -> Any:
    return cli("apply", "--desired", str(repo.desired), "--yes")


def promote(cli: Cli, repo: Repo, *args: str) -> Any:
    return cli("promote", *args, "--repo", str(repo.work), "--path", "desired")


def trailers(repo: Repo, rev: str = "HEAD") -> dict[str, list[str]]:
    text = git(repo.work, "log", "-1", "--format=%(trailers:only,unfold)", rev)
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        found.setdefault(key, []).append(value)
    return found


def staged_v2(cli: Cli, repo: Repo) -> str:
    """Staging serves v2 (generation 2), production v1."""
    assert apply(cli, repo).code == 0
    repo.write_staging(V2)
    sha = repo.commit("staging web v2")
    result = apply(cli, repo)
    assert result.code == 0, result.stderr
    return sha


def test_promote_writes_one_commit_changing_one_line_with_its_trailers(
    cli: Cli, repo: Repo
) -> None:
    staging_commit = staged_v2(cli, repo)
    before_text = repo.production_file.read_text()
    before = repo.head()

    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    assert result.code == 0, result.stderr
    assert "production/web: " + V2 + " from staging g2" in result.stdout
    assert repo.commits() == 3 and git(repo.work, "rev-parse", "HEAD~1") == before
    assert git(repo.work, "diff", "--numstat", "HEAD~1", "HEAD") == (
        "1\t1\tdesired/environments/production.yaml"
    )
    # Every byte but the image value is as it was: comments, quoting, flow style.
    assert repo.production_file.read_text() == before_text.replace(
        f'image: "{V1}"      # keep', f'image: "{V2}"      # keep'
    )
    found = trailers(repo)
    assert found["Promoted-From"] == ["staging/web g2"]
    assert found["Promoted-Image"] == [V2]
    assert found["Promoted-Commit"] == [staging_commit]
    assert len(found["Soaked"]) == 1 and "Approved-Unsoaked" not in found
    assert git(repo.work, "status", "--porcelain", "--untracked-files=no") == ""

    # The target has it now: nothing to do, said so, no commit.
    again = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    assert again.code == 0, again.stderr
    assert "nothing to promote" in again.stdout
    assert repo.commits() == 3

    # The ledger keeps who promoted what.
    [event] = json.loads(cli("ledger", "events", "--kind", "promoted", "--json").stdout)
    assert event["env"] == "production" and event["detail"]["image"] == V2
    assert event["detail"]["commit"] == repo.head()

    # The daemon needs nothing new: the next pass rolls production out with that id.
    rolled = apply(cli, repo)
    assert rolled.code == 0, rolled.stderr
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    active = {(r["env"], r["service"]): r for r in rows if r["state"] == "active"}
    assert active[("production", "web")]["image_id"] == active[("staging", "web")]["image_id"]


def refused(result: Any, repo: Repo, head: str, *needles: str) -> None:
    assert result.code != 0, result.stdout
    assert repo.head() == head, "a refused promotion wrote a commit"
    assert git(repo.work, "status", "--porcelain", "--untracked-files=no") == "" or any(
        n == "dirty" for n in needles
    )
    for needle in needles:
        if needle != "dirty":
            assert needle in result.stderr, result.stderr


def test_every_refusal_says_why_and_writes_no_commit(
    cli: Cli, repo: Repo, health: HealthServer
) -> None:
    staged_v2(cli, repo)
    head = repo.head()

    # Not soaked yet (a fresh activation against a 1h soak); then overridden, recorded.
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "1h")
    refused(result, repo, head, "has soaked", "of the 1h asked", "--approve-unsoaked")
    assert result.code == 3

    # Unknown environment and service.
    refused(promote(cli, repo, "staging", "web", "--to", "prod"), repo, head,
            "unknown environment 'prod'")  # fmt: skip
    refused(promote(cli, repo, "staging", "wbe", "--to", "production"), repo, head,
            "staging has no service 'wbe'")  # fmt: skip

    # A dirty checkout.
    (repo.desired / "environments" / "staging.yaml").write_text(
        (repo.desired / "environments" / "staging.yaml").read_text() + "# edited\n"
    )
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    refused(result, repo, head, "dirty", "uncommitted changes", "staging.yaml")
    git(repo.work, "checkout", "--", ".")

    # The target frozen.
    frozen = "frozen: true\n" + PRODUCTION.format(image=V1, api=V1)
    repo.production_file.write_text(frozen)
    head = repo.commit("freeze production")
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    refused(result, repo, head, "production/web is frozen")
    repo.production_file.write_text(PRODUCTION.format(image=V1, api=V1))
    head = repo.commit("unfreeze production")

    # A rollback pin on staging.
    assert cli("rollback", "staging", "web", "--yes", "--desired", str(repo.desired)).code == 0
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    refused(result, repo, head, "pinned to generation 1")
    assert cli("release", "staging", "web", "--desired", str(repo.desired)).code == 0
    assert apply(cli, repo).code == 0

    # The staging generation of the new image failed: it never proved itself.
    health.bad.add(V3)
    repo.write_staging(V3)
    head = repo.commit("staging web v3")
    assert apply(cli, repo).code == 1
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    refused(result, repo, head, "generation 3", "failed")

    # Overriding the soak is recorded in the commit's trailers.
    repo.write_staging(V2)
    head = repo.commit("staging back to v2")
    assert apply(cli, repo).code == 0
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "1h",
                     "--approve-unsoaked", "hotfix for INC-42")  # fmt: skip
    assert result.code == 0, result.stderr
    assert trailers(repo)["Approved-Unsoaked"][0].startswith("hotfix for INC-42 (by ")


def test_all_promotes_every_service_whose_image_differs(cli: Cli, repo: Repo) -> None:
    assert apply(cli, repo).code == 0
    repo.write_staging(V2, api=V3)
    repo.commit("staging web v2, api v3")
    assert apply(cli, repo).code == 0
    result = promote(cli, repo, "staging", "--all", "--to", "production", "--min-soak", "0s")
    assert result.code == 0, result.stderr
    assert git(repo.work, "diff", "--numstat", "HEAD~1", "HEAD") == (
        "2\t2\tdesired/environments/production.yaml"
    )
    assert sorted(trailers(repo)["Promoted-Image"]) == sorted([V2, V3])
    assert "api: {image: " + V3 + ", count: 1}   # flow style" in repo.production_file.read_text()


def test_a_push_race_ends_with_both_changes_and_no_force(
    cli: Cli, repo: Repo, tmp_path: Path
) -> None:
    staged_v2(cli, repo)
    git(repo.work, "push", "-q", "origin", "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo.bare), str(other))
    # Between our fetch and our push, a colleague's commit lands (from a pre-push hook
    # of our checkout, the first time only): the push is rejected and redone.
    hook = repo.work / ".git" / "hooks" / "pre-push"
    hook.write_text(
        "#!/bin/sh\n"
        f"[ -e {tmp_path}/raced ] && exit 0\n"
        f"touch {tmp_path}/raced\n"
        f"cd {other} && echo '# colleague' >> desired/environments/staging.yaml && "
        "git commit -qam 'colleague change' && git push -q origin HEAD:main\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    theirs = None
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s",
                     "--push")  # fmt: skip
    assert result.code == 0, result.stderr
    assert (tmp_path / "raced").exists(), "the race did not happen"
    theirs = git(other, "rev-parse", "HEAD")
    remote_head = git(repo.bare, "rev-parse", "main")
    assert remote_head == repo.head()
    # Theirs is kept (an ancestor of the remote's head: nothing was forced over it).
    assert git(repo.bare, "merge-base", "--is-ancestor", theirs, remote_head, check=False) == ""
    assert git(repo.bare, "rev-parse", f"{remote_head}~1") == theirs
    assert trailers(repo)["Promoted-Image"] == [V2]
    assert "# colleague" in (repo.desired / "environments" / "staging.yaml").read_text()
    assert git(repo.work, "diff", "--numstat", "HEAD~1", "HEAD") == (
        "1\t1\tdesired/environments/production.yaml"
    )


def test_set_image_from_a_packer_manifest_is_one_one_line_commit(
    cli: Cli, repo: Repo, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "builds": [
            {"name": "old", "builder_type": "amazon-ebs", "artifact_id": "us-east-1:ami-00000bad",
             "packer_run_uuid": "run-1", "custom_data": None, "files": None},
            {"name": "web", "builder_type": "amazon-ebs",
             "artifact_id": "eu-west-1:ami-0e0e0e0e,us-east-1:ami-0abc1234",
             "packer_run_uuid": "run-2", "custom_data": None, "files": None},
        ],
        "last_run_uuid": "run-2",
    }))  # fmt: skip
    before = repo.production_file.read_text()
    result = cli("set-image", "production", "web", "--from-packer-manifest", str(manifest),
                 "--repo", str(repo.work), "--path", "desired")  # fmt: skip
    assert result.code == 0, result.stderr
    assert repo.commits() == 2
    assert git(repo.work, "diff", "--numstat", "HEAD~1", "HEAD") == (
        "1\t1\tdesired/environments/production.yaml"
    )
    assert repo.production_file.read_text() == before.replace(V1 + '"', 'ami-0abc1234"', 1)
    found = trailers(repo)
    assert found["Image-Set"] == ["production/web ami-0abc1234"]
    assert "build web run run-2" in found["Image-Source"][0]

    # A plain id, a no-op, and a manifest without an artifact for the region.
    plain = cli("set-image", "production", "api", "ami-0def5678", "--repo", str(repo.work),
                "--path", "desired")  # fmt: skip
    assert plain.code == 0, plain.stderr
    assert "api: {image: ami-0def5678, count: 1}" in repo.production_file.read_text()
    same = cli("set-image", "production", "api", "ami-0def5678", "--repo", str(repo.work),
               "--path", "desired")  # fmt: skip
    assert same.code == 0 and "nothing to do" in same.stdout and repo.commits() == 3
    manifest.write_text(json.dumps({"builds": [{"name": "x", "artifact_id": "eu-west-1:ami-1",
                                                "packer_run_uuid": "r"}], "last_run_uuid": "r"}))
    wrong = cli("set-image", "production", "web", "--from-packer-manifest", str(manifest),
                "--repo", str(repo.work), "--path", "desired")  # fmt: skip
    assert wrong.code != 0 and "no artifact for region us-east-1" in wrong.stderr
    assert repo.commits() == 3
    # An image that is not a valid value is refused by validation, nothing committed.
    bad = cli("set-image", "production", "web", " ", "--repo", str(repo.work), "--path",
              "desired")  # fmt: skip
    assert bad.code != 0 and repo.commits() == 3
    assert git(repo.work, "status", "--porcelain", "--untracked-files=no") == ""


def test_plan_and_status_say_which_environment_is_behind(cli: Cli, repo: Repo) -> None:
    staged_v2(cli, repo)
    status = json.loads(cli("status", "--json").stdout)
    web = next(s for s in status["services"] if (s["env"], s["service"]) == ("production", "web"))
    [lag] = web["behind"]
    assert lag["behind"] == "staging" and lag["generations"] == 1 and lag["image"] == V2
    assert "production/web is 1 generation behind staging" in cli("status").stdout
    plan = json.loads(cli("plan", "--desired", str(repo.desired), "--json").stdout)
    assert [(b["env"], b["service"], b["behind"]) for b in plan["behind"]] == [
        ("production", "web", "staging")
    ]
    assert "1 generation behind staging" in cli("plan", "--desired", str(repo.desired)).stdout
    assert os.environ.get("GIT_CONFIG_NOSYSTEM") == "1"
    assert yaml.safe_load(repo.production_file.read_text())["services"]["web"]["image"] == V1


def test_daemon_applies_a_pushed_promotion_and_answers_a_switch(
    cli: Cli, repo: Repo, tmp_path: Path
) -> None:
    """The whole path: the daemon follows the bare remote; staging rolls out v2; the
    promotion is pushed; production's new generation waits (`switch: manual`) across
    passes until `reconciler switch`, answered by the running daemon."""
    repo.production_file.write_text(
        PRODUCTION.format(image=V1, api=V1).replace(
            "    keep_previous: 10m\n",
            "    keep_previous: 10m\n    traffic: {command: \"true\", switch: manual}\n",
        )
    )
    repo.commit("production web switches by hand")
    git(repo.work, "push", "-q", "origin", "main")
    daemon = DaemonProcess(state_dir=cli.state_dir, repo=str(repo.bare),
                           log_path=tmp_path / "daemon.log", interval="2s")  # fmt: skip

    def active(env: str) -> dict[str, Any] | None:
        with Ledger.open(cli.state_dir) as ledger:
            rows = ledger.generation_rows(env=env, service="web")
        return next((r for r in rows if r["state"] == "active"), None)

    def states(env: str) -> dict[int, str]:
        with Ledger.open(cli.state_dir) as ledger:
            return {r["number"]: r["state"]
                    for r in ledger.generation_rows(env=env, service="web")}  # fmt: skip

    def runs() -> int:
        with Ledger.open(cli.state_dir) as ledger:
            return len(ledger.run_rows())

    try:
        wait_for(lambda: states("staging") == {1: "active"} and states("production") == {
            1: "active"}, what="v1 everywhere")  # fmt: skip
        repo.write_staging(V2)
        repo.commit("staging web v2")
        git(repo.work, "push", "-q", "origin", "main")
        wait_for(lambda: (active("staging") or {}).get("number") == 2, what="staging g2")
        before = int(git(repo.bare, "rev-list", "--count", "main"))

        result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s",
                         "--push")  # fmt: skip
        assert result.code == 0, result.stderr
        assert int(git(repo.bare, "rev-list", "--count", "main")) == before + 1
        assert git(repo.bare, "diff", "--numstat", "main~1", "main") == (
            "1\t1\tdesired/environments/production.yaml"
        )
        wait_for(lambda: states("production").get(2) == "ready", what="production g2 ready")
        runs_then = runs()
        wait_for(lambda: runs() >= runs_then + 2, what="two more passes")
        assert states("production") == {1: "active", 2: "ready"}

        switched = cli("switch", "production", "web", "--wait", "60s")
        assert switched.code == 0, switched.stderr
        assert "request" in switched.stderr
        assert states("production") == {1: "standby", 2: "active"}
        production, staging = active("production"), active("staging")
        assert production is not None and staging is not None
        assert production["image_id"] == staging["image_id"] == V2
    finally:
        assert daemon.stop() == 0


def test_the_promotion_commit_is_signed_when_the_operators_git_signs(
    cli: Cli, repo: Repo, tmp_path: Path
) -> None:
    """Nothing is passed to git about signing: the operator's configuration decides."""
    key = tmp_path / "operator-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ada@example.invalid",
                    "-f", str(key)], check=True)  # fmt: skip
    (tmp_path / "gitconfig").write_text(
        f"[gpg]\n\tformat = ssh\n[user]\n\tsigningkey = {key}\n[commit]\n\tgpgsign = true\n"
    )
    public = (tmp_path / "operator-key.pub").read_text()
    (tmp_path / "allowed").write_text(f"ada@example.invalid {public}")
    staged_v2(cli, repo)
    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s")
    assert result.code == 0, result.stderr
    verdict = git(repo.work, "-c", f"gpg.ssh.allowedSignersFile={tmp_path / 'allowed'}", "log",
                  "-1", "--format=%G? %GS")  # fmt: skip
    assert verdict == "G ada@example.invalid"


def test_push_from_a_checkout_behind_the_remote_fast_forwards_and_one_ahead_is_refused(
    cli: Cli, repo: Repo, tmp_path: Path
) -> None:
    staged_v2(cli, repo)
    git(repo.work, "push", "-q", "origin", "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo.bare), str(other))
    (other / "NOTES").write_text("a colleague's notes\n")
    git(other, "add", "NOTES")
    git(other, "commit", "-qm", "notes")
    git(other, "push", "-q", "origin", "HEAD:main")
    theirs = git(other, "rev-parse", "HEAD")

    result = promote(cli, repo, "staging", "web", "--to", "production", "--min-soak", "0s",
                     "--push")  # fmt: skip
    assert result.code == 0, result.stderr
    assert git(repo.work, "rev-parse", "HEAD~1") == theirs
    assert git(repo.bare, "rev-parse", "main") == repo.head()

    # A local commit not on the remote: --push would publish it too, so it refuses.
    (repo.work / "LOCAL").write_text("not pushed\n")
    git(repo.work, "add", "LOCAL")
    git(repo.work, "commit", "-qm", "local only")
    head = repo.head()
    repo.write_staging(V2)  # unchanged content: the checkout stays clean
    again = cli("set-image", "production", "web", "ami-0aaaaaaa", "--repo", str(repo.work),
                "--path", "desired", "--push")  # fmt: skip
    assert again.code != 0 and "commits that are not on origin" in again.stderr
    assert repo.head() == head and git(repo.bare, "rev-parse", "main") != head
