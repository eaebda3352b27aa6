"""Hostile desired states through the CLI, against a sandbox that already runs a fleet.

Every case in tests/support/hostile/cases (see tests/support/hostile_corpus.py) is applied with
`reconciler apply`: it must exit 1 (3 for the empty-state guards), print one problem
(two for the YAML bomb: its anchors and its aliases) naming its file, line and key,
echo no secret, and make zero mutating API calls. Timings are printed by
benchmarks/hostile_input.py, not asserted here.

The canary test at the end fails a run on purpose, in several ways, with a canary
credential in play, and then looks for the canary everywhere it could leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.providers.sandbox import SandboxServer, clear_faults, reset_sandbox, set_faults
from tests.conftest import Cli, CliResult, mutating_calls
from tests.support.cloud import live_nodes
from tests.support.desired_builder import IMAGE_V1, write_desired
from tests.support.hostile_corpus import BASE, Case, build_case, load_cases

CASES = load_cases()


@dataclass(frozen=True)
class Outcomes:
    results: dict[str, tuple[Path, CliResult]]  # case name -> (its root, what the CLI did)
    baseline: int  # mutating calls after the valid state converged
    after: int  # mutating calls after every hostile case ran


@pytest.fixture(scope="module")
def outcomes(
    sandbox_server: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcomes]:
    """Converge the valid base state, then apply every case against that fleet.

    The cases run concurrently (each is its own `reconciler apply` process, sharing the
    ledger as consecutive runs would) to keep the suite fast; each test then checks
    its case's output, and all of them that no case made a mutating call.
    """
    reset_sandbox(sandbox_server.endpoint)
    work = tmp_path_factory.mktemp("hostile")
    cli = Cli(state_dir=work / "state", cwd=work)
    root = build_case(
        Case("base", 0, "", None, "", ""), work / "base", endpoint=sandbox_server.endpoint
    )
    result = cli("apply", "--desired", str(root))
    assert result.code == 0, result.stderr
    assert len(live_nodes(sandbox_server.endpoint)) == 3
    baseline = mutating_calls(sandbox_server.endpoint)

    def run(case: Case) -> tuple[str, tuple[Path, CliResult]]:
        case_root = build_case(case, work / case.name, endpoint=sandbox_server.endpoint)
        # Own state dir per case: concurrent applies would wait on the state lock.
        case_cli = Cli(state_dir=work / f"{case.name}-state", cwd=work)
        return case.name, (case_root, case_cli("apply", "--desired", str(case_root)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(pool.map(run, CASES))
    yield Outcomes(results, baseline, mutating_calls(sandbox_server.endpoint))
    reset_sandbox(sandbox_server.endpoint)


def problem_lines(stderr: str) -> list[str]:
    """The indented lines under the CLI's "invalid desired state:" or guard header."""
    lines, inside = [], False
    for line in stderr.splitlines():
        if line.startswith(("invalid desired state:", "refused by a guard")):
            inside = True
        elif inside and line.startswith("  "):
            lines.append(line.strip())
        elif not line.startswith("{"):  # JSON log lines may interleave
            inside = False
    return lines


def test_the_corpus_is_large_and_the_base_is_valid(tmp_path: Path) -> None:
    from reconciler.desired import load_desired_state

    assert len(CASES) >= 30
    assert len(load_desired_state(BASE).services()) == 2


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gives_one_located_error_and_no_mutation(
    case: Case, outcomes: Outcomes
) -> None:
    root, result = outcomes.results[case.name]

    assert result.code == case.exit, result.stdout + result.stderr
    problems = problem_lines(result.stderr)
    # A guard lists every reason it refused; the empty-state reason comes first (a
    # mass-destroy reason may follow: emptying a file would also destroy its fleet).
    assert len(problems) == case.problems or (case.exit == 3 and problems), problems
    problem = problems[0]
    if case.exit == 1:
        where = os.path.join(str(root), case.file) if case.file else str(root)
        where += f":{case.line}" if case.line is not None else ""
        assert problem.startswith(where + ":"), (problem, where)
        rest = problem[len(where) + 1 :].lstrip()
        if case.key:
            assert rest.startswith(case.key + ":"), (rest, case.key)
    assert case.message in problem
    for secret in case.never_shown:
        assert secret not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert outcomes.after == outcomes.baseline


def test_validate_reports_the_same_problem_without_touching_the_cloud(
    tmp_path: Path, sandbox_server: SandboxServer
) -> None:
    case = next(c for c in CASES if c.name == "image-unquoted-1.10")
    root = build_case(case, tmp_path / "desired", endpoint=sandbox_server.endpoint)
    cli = Cli(state_dir=tmp_path / "state", cwd=tmp_path)
    before = mutating_calls(sandbox_server.endpoint)

    result = cli("validate", "--desired", str(root))

    assert result.code == 1
    assert problem_lines(result.stderr) == [
        f"{root}/environments/production.yaml:4: services.web.image: must be a string, got a "
        'number (1.10); quote it if you mean the text: "1.10"'
    ]
    assert mutating_calls(sandbox_server.endpoint) == before


# ---------------------------------------------------------------- the canary

CANARY_SECRET = "CANARY-s3cr3t-4e9d21"
CANARY_KEY = "AKIDCANARY4e9d21"


def run_cli(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state")),
            *("--log-format", "json", "-v", *args),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_canary_credential_never_leaks_from_failing_applies(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    (tmp_path / "aws_secret").write_text(CANARY_SECRET + "\n")
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        driver="ec2",
        environments={"production": {"web": {"image": IMAGE_V1, "count": 2}}},
        credentials={"key": {"env": "TEST_CANARY_KEY"}, "secret": {"file": "aws_secret"}},
    )
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "TEST_CANARY_KEY": CANARY_KEY}
    outputs: list[str] = []

    def apply(*extra: str) -> int:
        done = run_cli(tmp_path, "apply", "--desired", str(root), *extra, env=env)
        outputs.append(done.stdout + done.stderr)
        return done.returncode

    # Retries with errors logged at every level, then a success.
    set_faults(
        sandbox.endpoint,
        [
            {"action": "RunInstances", "kind": "error5xx", "times": 1},
            {"action": "RunInstances", "kind": "drop-response", "times": 1},
            {"action": "DescribeInstances", "kind": "truncate", "times": 1},
        ],
    )
    assert apply() == 0, outputs[-1]
    # The cloud rejects the credentials: a terminal provider error.
    set_faults(sandbox.endpoint, [{"action": "*", "kind": "auth"}])
    assert apply() == 1, outputs[-1]
    assert "rejected the credentials" in outputs[-1]
    clear_faults(sandbox.endpoint)
    # A create that fails for good in the middle of a rollout (compensation runs).
    write_desired(
        root,
        endpoint=sandbox.endpoint,
        driver="ec2",
        environments={"production": {"web": {"image": "ami-12c6146b", "count": 2}}},
        credentials={"key": {"env": "TEST_CANARY_KEY"}, "secret": {"file": "aws_secret"}},
    )
    set_faults(sandbox.endpoint, [{"action": "RunInstances", "kind": "auth", "times": 1}])
    assert apply() == 1, outputs[-1]
    clear_faults(sandbox.endpoint)

    everything = "\n".join(outputs)
    assert "provider_call_retry" in everything  # the retries were logged, at -v
    for canary in (CANARY_SECRET, CANARY_KEY):
        assert canary not in everything
        for path in (tmp_path / "state").rglob("*"):
            if path.is_file():
                assert canary.encode() not in path.read_bytes(), path
        for node in live_nodes(sandbox.endpoint):
            assert canary not in json.dumps(node.extra, default=str)
