"""The hostile-input corpus: bad desired states built from `tests/support/hostile/`.

`tests/support/hostile/base/` is a valid desired state. Each `tests/support/hostile/cases/<name>/`
holds the files that replace or add to it, and an `expect.yaml` saying what the
loader must report (exit code, file, line, key, a message fragment, strings that must
never be echoed) plus `setup` steps for what is better generated than committed:
symlinks that escape the root, non-UTF-8 bytes, a 20 MB file, deletions.

Used by tests/desired/test_hostile_input.py and benchmarks/hostile_input.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HOSTILE = Path(__file__).resolve().parent / "hostile"
BASE = HOSTILE / "base"
CASES = HOSTILE / "cases"
BASE_ENDPOINT = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Case:
    name: str
    exit: int
    file: str  # relative to the desired-state root; "" for the root itself
    line: int | None
    key: str
    message: str
    problems: int = 1  # how many problems the loader reports (a YAML bomb: anchor + alias)
    never_shown: tuple[str, ...] = ()
    setup: tuple[dict[str, Any], ...] = field(default=(), repr=False)


def load_cases() -> list[Case]:
    cases = []
    for directory in sorted(CASES.iterdir()):
        expect = directory / "expect.yaml"
        spec: dict[str, Any] = (
            yaml.safe_load(expect.read_text()) if expect.exists() else None
        ) or {}
        cases.append(
            Case(
                name=directory.name,
                exit=int(spec.get("exit", 1)),
                file=str(spec.get("file", "")),
                line=spec.get("line"),
                key=str(spec.get("key", "")),
                message=str(spec.get("message", "")),
                problems=int(spec.get("problems", 1)),
                never_shown=tuple(spec.get("never_shown", ())),
                setup=tuple(spec.get("setup", ())),
            )
        )
    return cases


def build_case(case: Case, root: Path, *, endpoint: str = BASE_ENDPOINT) -> Path:
    """Write the base state, then the case's files and setup steps, under `root`."""
    shutil.copytree(BASE, root)
    overlay = CASES / case.name
    for source in sorted(overlay.rglob("*")):
        relative = source.relative_to(overlay)
        if source.is_file() and relative.name != "expect.yaml":
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    for step in case.setup:
        _run_step(step, root)
    for config in (root / "reconciler.yaml",):
        if config.is_file() and config.stat().st_size < 65536:
            config.write_text(config.read_text().replace(BASE_ENDPOINT, endpoint))
    return root


def _run_step(step: dict[str, Any], root: Path) -> None:
    if "delete" in step:
        target = root / step["delete"]
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    elif "symlink" in step:
        outside = root.parent / f"{root.name}-outside-{Path(step['symlink']).name}"
        outside.write_text(step["outside"])
        link = root / step["symlink"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside)
    elif "fifo" in step:
        target = root / step["fifo"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        os.mkfifo(target)
    elif "mkdir" in step:
        target = root / step["mkdir"]
        if target.is_file():
            target.unlink()
        target.mkdir(parents=True, exist_ok=True)
    elif "link" in step:  # a symlink to a given target: itself (a loop), /dev/zero, ...
        target = root / step["link"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(target if step["to"] == "itself" else Path(step["to"]))
    elif "rename" in step:
        (root / step["rename"]).rename(root / step["to"])
    elif "write" in step:
        target = root / step["write"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if "latin1" in step:
            target.write_bytes(step["latin1"].encode("latin-1"))
        elif "size" in step:
            _write_padded(target, step["prefix"], step["filler"], int(step["size"]))
        else:
            target.write_text(step["text"])
    else:
        raise ValueError(f"unknown setup step {step!r}")


def _write_padded(target: Path, prefix: str, filler: str, size: int) -> None:
    chunk = filler.encode() * 1024
    with target.open("wb") as out:
        out.write(prefix.encode())
        written = len(prefix)
        while written < size:
            piece = chunk[: size - written]
            out.write(piece)
            written += len(piece)
