"""The guided tour (`reconciler demo`): three passes against the built-in sandbox.

Owns: a throwaway git repository and state directory, and the narration. Must not:
touch anything outside its temporary directory or reach any network but loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.model import ObservedInstance
from reconciler.present import render
from reconciler.providers.sandbox import in_process_endpoint

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "reconciler demo",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "reconciler demo",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **_GIT_ENV},
    )


def run_demo(source: Path, *, pause: float = 1.0) -> int:
    console = Console()

    def step(title: str, *lines: str) -> None:
        time.sleep(pause)
        console.rule(f"[bold]{title}")
        for line in lines:
            console.print(line)

    endpoint = in_process_endpoint()
    with tempfile.TemporaryDirectory(prefix="reconciler-demo-") as tmp:
        repo = Path(tmp) / "desired-state"
        shutil.copytree(source, repo)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "Initial desired state")
        ledger = Ledger.open(Path(tmp) / "state")
        try:
            step(
                "1. Apply from empty",
                f"A sandbox EC2 endpoint (moto) listens on {endpoint}.",
                "The real libcloud EC2 driver talks to it over HTTP.",
                "Nothing runs yet, so every service gets generation 1.",
            )
            _apply(console, repo, ledger)

            step(
                "2. Deploy a new image",
                "We commit an image bump for production/web. Nothing is patched:",
                "generation 2 is created beside generation 1, waited for and activated;",
                "generation 1 stays as a hot standby for `keep_previous`.",
            )
            env_file = repo / "environments" / "production.yaml"
            text = env_file.read_text()
            bumped = re.sub(
                r"(web:\s*\n(?:\s+#.*\n)*\s+image:\s*)ami-03cf127a", r"\1ami-12c6146b", text
            )
            env_file.write_text(bumped)
            _git(repo, "commit", "-q", "-am", "Deploy web v2 (ami-12c6146b)")
            _apply(console, repo, ledger)

            step(
                "3. Heal drift",
                "Someone terminates a production/web instance behind our back.",
                "The next pass sees the empty slot and refills it in the same generation.",
            )
            victim = _terminate_one(repo, env="production", service="web")
            console.print(f"Terminated {victim.id} ({victim.name}) out of band.")
            _apply(console, repo, ledger)

            step("4. The ledger", "Every generation, with its image, commit and lifetime:")
            render.print_rows(
                console,
                render.compact_generation_rows(ledger.history_rows()),
                render.COMPACT_COLUMNS,
                title="reconciler ledger history",
            )
            console.print("Try it yourself: run `reconciler sandbox` in one terminal, set")
            console.print(
                "`endpoint: http://127.0.0.1:5000` in a profile, then `reconciler apply`."
            )
        finally:
            ledger.close()
    return 0


def _apply(console: Console, repo: Path, ledger: Ledger) -> None:
    outcome = engine.apply_pass(repo, ledger)
    render.print_plan(console, outcome.plan, commit=outcome.desired.commit)
    assert outcome.result is not None
    done = ", ".join(f"{n} {k}" for k, n in sorted(outcome.result.counts.items()))
    console.print(f"Applied: {done or 'nothing to do'}")
    for failure in outcome.result.failures:
        console.print(f"[red]failed:[/red] {failure}")


def _terminate_one(repo: Path, *, env: str, service: str) -> ObservedInstance:
    desired = engine.read_desired(repo)
    providers = engine.build_providers(desired)
    candidates = sorted(
        (
            i
            for i in engine.observe(desired, providers)
            if i.alive and (i.env, i.service) == (env, service)
        ),
        key=lambda i: (-(i.generation or 0), i.slot or 0),
    )
    victim = candidates[0]
    providers[victim.provider].destroy_instance(victim.id)
    return victim
