"""An operator's day (issue 14): nothing may look fine when it is not, and the incident
commands work while the daemon runs. Real CLI processes, the sandbox EC2 endpoint, a
health command whose stderr says why, a webhook receiver, the daemon as a process."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from reconciler.service.metrics import Metrics
from tests.conftest import Cli
from tests.support.bluegreen_support import WebhookReceiver
from tests.support.cloud import live_nodes
from tests.support.daemon_support import DaemonProcess, Remote, wait_for
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired

IMAGE_BAD = "ami-0badbad0"
SECRET = "operator-day-webhook-secret-5521"
WHY = "database unreachable: connection refused to 10.0.0.7:5432"


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET)
    yield server
    server.close()


class Desired:
    """A desired state whose health command fails, with a reason on stderr, for one image."""

    def __init__(self, root: Path, endpoint: str, webhook: WebhookReceiver) -> None:
        self.root = root
        self.endpoint = endpoint
        self.webhook = webhook
        self.check = root.parent / "check.sh"
        self.check.write_text(
            "#!/bin/sh\n"
            f'if [ "$RECONCILER_IMAGE" = "{IMAGE_BAD}" ]; then\n'
            f'  echo "starting probe" ; echo "{WHY}" >&2 ; exit 3\n'
            "fi\nexit 0\n"
        )
        self.check.chmod(self.check.stat().st_mode | stat.S_IXUSR)
        self.secret = root.parent / "hook_secret"
        self.secret.write_text(SECRET)

    def write(self, services: dict[str, dict[str, Any]], **options: Any) -> None:
        health = {"command": str(self.check), "timeout": "2s", "interval": "1s",
                  "healthy_after": 1}  # fmt: skip
        write_desired(
            self.root, endpoint=self.endpoint,
            environments={"prod": {name: {"health": dict(health), **spec}
                                   for name, spec in services.items()}},
            notifiers=[{"webhook": self.webhook.url, "secret": {"file": str(self.secret)}}],
            **options,
        )  # fmt: skip


@pytest.fixture
def desired(
    tmp_path: Path,
    sandbox: SandboxServer,
    webhook: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> Desired:
    monkeypatch.setenv("RECONCILER_CREDENTIAL_DIRS", str(tmp_path))
    return Desired(tmp_path / "desired", sandbox.endpoint, webhook)


def run(cli: Cli, desired: Desired, *args: str) -> Any:
    return cli(*args, "--desired", str(desired.root))


def metrics_after_pass(state_dir: Path, root: Path) -> str:
    """What /metrics says after one more pass (the exporter fed as the daemon feeds it)."""
    with Ledger.open(state_dir) as ledger:
        metrics = Metrics(ledger)
        outcome = engine.apply_pass(root, ledger)
        metrics.pass_finished(result=outcome.result_name or "", seconds=1.0, outcome=outcome)
        return generate_latest(metrics.registry).decode()


def held_metric(text: str, service: str, reason: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("reconciler_service_held{") and (
            f'service="{service}"' in line and f'reason="{reason}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


def gauge(text: str, name: str, service: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'service="{service}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_failed_recreate_is_down_everywhere_with_the_health_commands_stderr(
    cli: Cli, desired: Desired, sandbox: SandboxServer, webhook: WebhookReceiver
) -> None:
    desired.write({"db": {"image": IMAGE_V1, "strategy": "recreate"}})
    assert run(cli, desired, "apply").code == 0
    desired.write({"db": {"image": IMAGE_BAD, "strategy": "recreate"}})
    failed = run(cli, desired, "apply")
    assert failed.code == 1
    assert "nothing to do" not in failed.stdout
    assert WHY in failed.stderr, "the summary says what failed, with the check's reason"
    assert not [n for n in live_nodes(sandbox.endpoint)], "recreate left nothing running"

    # The failure event carries the command's stderr, bounded, one line.
    failures = json.loads(cli("ledger", "events", "--kind", "rollout_failed", "--json").stdout)
    assert any(WHY in e["detail"]["error"] for e in failures)
    assert all(len(e["detail"]["error"]) < 1000 for e in failures)

    # plan: not "No changes"; the service is shown down and failed, with why and since.
    plan = run(cli, desired, "plan")
    assert plan.code == 0
    assert "No changes: the cloud matches" not in plan.stdout
    assert "DOWN" in plan.stdout and "prod/db" in plan.stdout
    document = json.loads(run(cli, desired, "plan", "--json").stdout)
    reasons = {h["reason"] for h in document["held"] if h["service"] == "db"}
    assert reasons == {"failed", "down"}
    assert all(h["since"] for h in document["held"])
    assert run(cli, desired, "plan", "--detailed-exitcode").code == 0, "nothing apply would do"

    # status: the service stays listed, as down, with what holds it.
    status = json.loads(cli("status", "--json").stdout)
    (db,) = [s for s in status["services"] if s["service"] == "db"]
    assert db["state"] == "down"
    assert {h["reason"] for h in db["held"]} == {"failed", "down"}
    assert all(h["since"] and h["why"] for h in db["held"])

    # metrics: the series stays, saying 0 running of 1 desired, down and failed.
    text = metrics_after_pass(cli.state_dir, desired.root)
    assert held_metric(text, "db", "down") == 1
    assert held_metric(text, "db", "failed") == 1
    assert held_metric(text, "db", "pinned") == 0
    assert gauge(text, "reconciler_service_running_instances", "db") == 0
    assert gauge(text, "reconciler_service_desired_instances", "db") == 1
    assert gauge(text, "reconciler_failed_generations", "db") == 1

    # notifiers: the failure (with the reason) and the service going down, once.
    kinds = [e["kind"] for e in webhook.events]
    assert kinds.count("service-down") == 1
    failed_events = [e for e in webhook.events if e["kind"] == "generation-failed"]
    assert failed_events and WHY in failed_events[0]["text"]
    assert "keeps serving" not in failed_events[0]["text"]

    # A working commit brings it back, and that is said too.
    desired.write({"db": {"image": IMAGE_V2, "strategy": "recreate"}})
    assert run(cli, desired, "apply").code == 0
    assert [e["kind"] for e in webhook.events].count("service-up") == 1
    assert json.loads(run(cli, desired, "plan", "--json").stdout)["held"] == []


def test_pinned_failed_and_frozen_services_show_in_plan_status_and_metrics(
    cli: Cli, desired: Desired
) -> None:
    services = {"web": {"image": IMAGE_V1}, "api": {"image": IMAGE_V1}, "jobs": {"image": IMAGE_V1}}
    desired.write(services)
    assert run(cli, desired, "apply").code == 0
    # web: v2 then rolled back (pinned); api: a failing image (failed, v1 serving);
    # jobs: frozen in the desired state while its image changes.
    desired.write({**services, "web": {"image": IMAGE_V2}})
    assert run(cli, desired, "apply").code == 0
    assert run(cli, desired, "rollback", "prod", "web", "--yes").code == 0
    desired.write({
        "web": {"image": IMAGE_V2}, "api": {"image": IMAGE_BAD},
        "jobs": {"image": IMAGE_V2, "frozen": True},
    })  # fmt: skip
    assert run(cli, desired, "apply").code == 1

    document = json.loads(run(cli, desired, "plan", "--json").stdout)
    held = {(h["service"], h["reason"]) for h in document["held"]}
    assert held == {("web", "pinned"), ("api", "failed"), ("jobs", "frozen")}
    pinned = next(h for h in document["held"] if h["reason"] == "pinned")
    assert pinned["since"] and "release" in pinned["why"]
    text = run(cli, desired, "plan").stdout
    assert "No changes to apply, but 3 held" in text
    for word in ("PINNED", "FAILED", "FROZEN"):
        assert word in text

    status = json.loads(cli("status", "--json").stdout)
    by_name = {s["service"]: s for s in status["services"]}
    assert {n: [h["reason"] for h in s["held"]] for n, s in by_name.items()} == {
        "web": ["pinned"], "api": ["failed"], "jobs": ["frozen"],
    }  # fmt: skip
    assert all(s["state"] == "held" for s in by_name.values())
    assert by_name["web"]["image"] == IMAGE_V1 and by_name["web"]["running"] == 1

    metrics = metrics_after_pass(cli.state_dir, desired.root)
    for service, reason in (("web", "pinned"), ("api", "failed"), ("jobs", "frozen")):
        assert held_metric(metrics, service, reason) == 1, (service, reason)
        assert held_metric(metrics, service, "down") == 0
    human = cli("status").stdout
    assert "pinned" in human and "frozen" in human


def test_rollback_without_yes_refuses_when_nobody_can_answer(cli: Cli, desired: Desired) -> None:
    desired.write({"web": {"image": IMAGE_V1}})
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(cli.state_dir), "rollback",
         "prod", "web", "--desired", str(desired.root)],
        capture_output=True, text=True, timeout=60, input="y\n",
    )  # fmt: skip
    assert done.returncode == 1
    assert "stdin is not a terminal" in done.stderr
    assert not (cli.state_dir / "ledger.sqlite").exists() or not json.loads(
        cli("ledger", "events", "--kind", "rollback", "--json").stdout
    )


def test_rollback_release_and_retry_while_the_daemon_runs(
    tmp_path: Path, sandbox: SandboxServer, cli: Cli
) -> None:
    remote = Remote(tmp_path, sandbox.endpoint)
    remote.push({"prod": {"web": {"image": IMAGE_V1, "count": 2}}}, "web v1")
    # An interval far beyond the test: whatever happens quickly is the request's doing.
    daemon = DaemonProcess(state_dir=cli.state_dir, repo=str(remote.bare),
                           log_path=tmp_path / "daemon.log", interval="1h")  # fmt: skip
    try:
        states = lambda: generation_states(cli.state_dir)  # noqa: E731
        wait_for(lambda: states() == {1: "active"}, what="generation 1")
        remote.push({"prod": {"web": {"image": IMAGE_V2, "count": 2}}}, "web v2")
        daemon.signal(__import__("signal").SIGHUP)
        wait_for(lambda: states() == {1: "standby", 2: "active"}, what="generation 2")

        started = time.monotonic()
        rolled = cli("rollback", "prod", "web", "--yes", "--wait", "60s")
        assert rolled.code == 0, rolled.stderr
        assert "request" in rolled.stderr and "recorded" in rolled.stderr
        assert "rolled back from generation 2 to 1" in rolled.stdout
        assert time.monotonic() - started < 60, "answered by the daemon, not by its interval"
        assert daemon.process.poll() is None, "the daemon kept running"
        assert states() == {1: "active", 2: "standby"}
        status = json.loads(cli("status", "--json").stdout)
        wait_for(
            lambda: [h["reason"] for s in json.loads(cli("status", "--json").stdout)["services"]
                     for h in s["held"]] == ["pinned"],
            what="status shows the pin",
        )  # fmt: skip
        assert status["requests"] == []

        released = cli("release", "prod", "web")
        assert released.code == 0, released.stderr
        # The daemon passes at once after answering: git (v2) is the truth again.
        wait_for(lambda: states() == {1: "standby", 2: "active"}, what="v2 active again")

        refused = cli("retry", "prod", "web")
        assert refused.code == 1
        assert "did not fail" in refused.stderr
        with Ledger.open(cli.state_dir) as ledger:
            answered = ledger.request_rows()
        assert [(r["kind"], r["state"]) for r in answered] == [
            ("rollback", "done"), ("release", "done"), ("retry", "refused"),
        ]  # fmt: skip
        assert all(r["requested_by"] and r["answered_at"] for r in answered)
    finally:
        assert daemon.stop() == 0


def test_a_request_nobody_takes_is_withdrawn(cli: Cli, desired: Desired) -> None:
    """The holder is not a daemon (here: a process holding the lock): the command waits,
    then withdraws its request so that nothing acts on it later by surprise."""
    desired.write({"web": {"image": IMAGE_V1}})
    assert run(cli, desired, "validate").code == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path;"
         " from reconciler.service.statelock import StateLock;"
         f" StateLock(Path({str(cli.state_dir)!r})).acquire(); print('held', flush=True);"
         " time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = cli("retry", "prod", "web", "--wait", "1s")
        assert done.code == 1
        assert "withdrawn" in done.stderr and "nothing was changed" in done.stderr
        with Ledger.open(cli.state_dir) as ledger:
            assert [r["state"] for r in ledger.request_rows()] == ["cancelled"]
    finally:
        holder.kill()
        holder.wait()


def generation_states(state_dir: Path) -> dict[int, str]:
    with Ledger.open(state_dir) as ledger:
        return {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}


@pytest.mark.parametrize("emptied", ["services: {}\n", "services:\n", "# retired\n"])
def test_validate_and_plan_give_one_verdict_on_an_emptied_environment(
    cli: Cli, desired: Desired, emptied: str
) -> None:
    desired.write({"web": {"image": IMAGE_V1}})
    (desired.root / "environments" / "staging.yaml").write_text(f"provider: cloud\n{emptied}")
    validated = run(cli, desired, "validate")
    planned = run(cli, desired, "plan")
    assert validated.code == planned.code == 3
    assert "staging" in validated.stderr and "declares no services" in validated.stderr
    assert "delete the file" in validated.stderr
    (desired.root / "environments" / "staging.yaml").unlink()
    assert run(cli, desired, "validate").code == run(cli, desired, "plan").code == 0


@pytest.mark.parametrize(
    "args",
    [
        ("plan", "--no-such-option"),
        ("no-such-command",),
        ("rollback", "prod"),
        ("daemon", "--repo", "x", "--interval", "0s"),
        ("ledger", "events", "--kind", "no_such_kind"),
        ("ledger", "history", "--limit", "-1"),
        ("--log-format", "xml", "status"),
    ],
    ids=["option", "command", "argument", "range", "kind", "limit", "choice"],
)
def test_usage_errors_exit_1_never_the_changes_pending_code(
    cli: Cli, args: tuple[str, ...]
) -> None:
    done = cli(*args)
    assert done.code == 1, (done.code, done.stderr)
    assert "Error" in done.stderr and "Traceback" not in done.stderr


def test_version_names_the_source_commit(cli: Cli) -> None:
    done = cli("--version")
    assert done.code == 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], check=False).stdout.strip()  # fmt: skip
    expected = head[:12] if head else "unknown"
    assert done.stdout.strip().startswith("reconciler ") and f"(commit {expected})" in done.stdout


def _on_a_terminal(
    cli: Cli, args: list[str], answer: str, *, columns: int = 80
) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin and stdout, answering its question."""
    import os
    import pty
    import select

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update({"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"})
    env["RECONCILER_CREDENTIAL_DIRS"] = os.environ.get("RECONCILER_CREDENTIAL_DIRS", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(cli.state_dir),
         "--log-format", "json", *args],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cli.cwd,
    )  # fmt: skip
    # stderr on the terminal too: input() writes its prompt there on a terminal.
    os.close(slave)
    seen = b""
    asked = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            seen += chunk
            if not asked and b"Apply this plan?" in seen:
                os.write(master, answer.encode() + b"\n")
                asked = True
        elif process.poll() is not None:
            break
    if process.poll() is None:
        process.kill()
    code = process.wait(timeout=60)
    os.close(master)
    return code, seen.decode(errors="replace")


def test_apply_on_a_terminal_shows_the_plan_and_asks(
    cli: Cli, desired: Desired, sandbox: SandboxServer
) -> None:
    from reconciler.providers.sandbox import fetch_stats

    desired.write({"web": {"image": IMAGE_V1}})
    code, screen = _on_a_terminal(cli, ["apply", "--desired", str(desired.root)], "n")
    assert code == 1, screen
    assert "create prod/web g1" in screen and "Apply this plan?" in screen
    assert not fetch_stats(sandbox.endpoint)["calls"].get("RunInstances"), "declined: no change"
    history = json.loads(cli("ledger", "history", "--json").stdout)
    assert history == [], "no generation recorded"

    code, screen = _on_a_terminal(cli, ["apply", "--desired", str(desired.root)], "y")
    assert code == 0, screen
    assert screen.count("create prod/web g1") == 1, "the plan is shown once, before the question"
    assert "Applied (run" in screen
    assert len(live_nodes(sandbox.endpoint)) == 1
    # --yes (and a pipe) never ask.
    desired.write({"web": {"image": IMAGE_V2}})
    assert run(cli, desired, "apply").code == 0


def test_log_lines_never_glue_onto_the_progress_bar(
    cli: Cli, desired: Desired, sandbox: SandboxServer
) -> None:
    """On a terminal the bar is drawn while the pass logs (boot waits, health gates):
    every log line starts on a line of its own."""
    import re

    desired.write({"web": {"image": IMAGE_V1, "count": 2}, "api": {"image": IMAGE_V1}})
    # Wide enough that the terminal does not wrap a JSON line: a break is a glue.
    code, screen = _on_a_terminal(
        cli, ["apply", "--yes", "--desired", str(desired.root)], "", columns=1000
    )
    assert code == 0, screen
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen).replace("\r", "\n")
    lines = [line for line in text.split("\n") if '"event"' in line]
    assert len(lines) >= 3, text
    for line in lines:
        assert line.lstrip().startswith("{") and line.rstrip().endswith("}"), repr(screen[-3000:])
        json.loads(line)


def test_shell_completion_offers_environments_and_services(cli: Cli, desired: Desired) -> None:
    desired.write({"web": {"image": IMAGE_V1}, "api": {"image": IMAGE_V1}})
    (desired.root / "environments" / "staging.yaml").write_text(
        "provider: cloud\nservices:\n  worker: {image: ami-03cf127a}\n"
    )

    def complete(words: str, index: int) -> list[str]:
        import os

        env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(index),
               "_RECONCILER_COMPLETE": "bash_complete",
               "RECONCILER_DEBUG_COMPLETION": "1"}  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "reconciler"], env=env, cwd=cli.cwd,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert all("," in line for line in done.stdout.splitlines()), done.stderr
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    root = str(desired.root)
    assert complete(f"reconciler rollback --desired {root} ", 4) == ["prod", "staging"]
    assert complete(f"reconciler rollback --desired {root} prod ", 5) == ["api", "web"]
    assert complete(f"reconciler release --desired {root} staging w", 5) == ["worker"]
    assert "rollback" in complete("reconciler roll", 1)


def test_status_at_80_columns_keeps_every_column(cli: Cli, desired: Desired) -> None:
    import os

    desired.write({"a-rather-long-service-name": {"image": IMAGE_V1, "count": 2}})
    assert run(cli, desired, "apply").code == 0
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(cli.state_dir), "status"],
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 80 for line in done.stdout.splitlines())
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "service" in line and "state" in line)
    for column in ("service", "state", "image", "running", "active", "standby"):
        assert column in header
    assert IMAGE_V1 in done.stdout and "2/2" in done.stdout and "\x1b[" not in done.stdout


def test_plan_says_when_the_checkout_has_uncommitted_changes(cli: Cli, desired: Desired) -> None:
    from tests.support.desired_builder import git_commit

    desired.write({"web": {"image": IMAGE_V1}})
    sha = git_commit(desired.root, "web v1")
    clean = run(cli, desired, "plan")
    assert sha[:12] in clean.stdout and "uncommitted" not in clean.stdout
    assert json.loads(run(cli, desired, "plan", "--json").stdout)["uncommitted_changes"] == 0
    desired.write({"web": {"image": IMAGE_V2}})
    dirty = run(cli, desired, "plan")
    assert f"{sha[:12]} with 1 uncommitted change(s)" in dirty.stdout
    assert json.loads(run(cli, desired, "plan", "--json").stdout)["uncommitted_changes"] == 1


def test_every_exception_class_lives_in_errors_py() -> None:
    """One error hierarchy (issue 15): a new exception class elsewhere fails this."""
    import ast

    root = Path(__file__).resolve().parents[2]
    builtin_bases = {"Exception", "ValueError", "ConnectionResetError", "RuntimeError",
                     "OSError", "KeyError", "TypeError", "LookupError"}  # fmt: skip
    from reconciler import errors

    ours = {name for name, value in vars(errors).items() if isinstance(value, type)}
    found = []
    for path in [*root.glob("reconciler/**/*.py"), *root.glob("plugins/**/*.py")]:
        if path.name == "errors.py" or path.name == "sandbox.py":  # sandbox: a fake network fault
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & (builtin_bases | ours):
                    found.append(f"{path.relative_to(root)}: {node.name}")
    assert found == []
