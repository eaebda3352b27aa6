"""The layers contract (.importlinter) holds the loop's shape: a module importing a layer
above its own fails `lint-imports`, as `make test` runs it. Checked on a copy of the
package with one upward import added (the planner importing the daemon's git source)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'plugins'}"}
    return subprocess.run(
        [str(LINT), "--config", str(tree / ".importlinter"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "reconciler", copy / "reconciler", ignore=ignore)
    shutil.copytree(ROOT / "plugins", copy / "plugins", ignore=ignore)
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    return copy


@pytest.mark.parametrize(
    ("module", "upward", "message"),
    [
        ("reconciler/planning/planner.py", "reconciler.service.gitsource",
         "reconciler.planning is not allowed to import reconciler.service"),
        ("reconciler/planning/planner.py", "reconciler.ledger.store",
         "reconciler.planning is not allowed to import reconciler.ledger"),
        ("reconciler/providers/base.py", "reconciler.apply.gates",
         "reconciler.providers is not allowed to import reconciler.apply"),
        ("reconciler/model.py", "reconciler.logs",
         "reconciler.model is not allowed to import reconciler.logs"),
    ],
    ids=["planner-daemon", "planner-ledger", "provider-apply", "model-logs"],
)  # fmt: skip
def test_an_upward_import_breaks_the_layers_contract(
    tree: Path, module: str, upward: str, message: str
) -> None:
    target = tree / module
    target.write_text(target.read_text() + f"\nimport {upward}  # noqa\n")
    done = lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and message in done.stdout, done.stdout[-3000:]


def test_the_copy_itself_keeps_every_contract(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "the loop's layers" in done.stdout and "BROKEN" not in done.stdout


def test_a_new_module_outside_every_layer_fails(tree: Path) -> None:
    (tree / "reconciler" / "stray.py").write_text('"""Placed in no layer."""\n')
    done = lint(tree)
    assert done.returncode != 0
    assert "stray" in done.stdout + done.stderr


def test_test_modules_import_helpers_from_support_never_from_each_other() -> None:
    import re

    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in (ROOT / "tests").rglob("*.py")
        for line in path.read_text().splitlines()
        if re.match(r"\s*(from|import) tests\.\w+\.test_\w+", line)
    ]
    assert offenders == []


def test_flags_are_keyword_arguments() -> None:
    """A boolean parameter is keyword-only (`f(x, force=True)`, never `f(x, True)`), but
    where click passes options or a libcloud method is overridden with its signature."""
    import ast

    exempt = {"cli", "connection.py"}
    found = []
    for path in (ROOT / "reconciler").rglob("*.py"):
        if exempt & {path.parent.name, path.name}:
            continue
        functions = [n for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, ast.FunctionDef)]  # fmt: skip
        for node in functions:
            for arg in node.args.posonlyargs + node.args.args:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if annotation.startswith("bool"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({arg.arg})")
    assert found == []
