"""Loading a desired-state directory: the entry point that ties the files together.

Owns: finding `reconciler.yaml` and `environments/*.yaml`, running every check over
every file in one pass, and returning a `DesiredState` or raising
`InvalidDesiredState` with all problems, ordered by file and line.
Must not: touch the network or a cloud, write anything, or stop at the first
problem when later files can still be checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from reconciler.desired.config import parse_settings
from reconciler.desired.environment import parse_environment
from reconciler.desired.schema import Reporter
from reconciler.desired.userdata import display_path, is_inside
from reconciler.desired.yamlsource import read_yaml_file
from reconciler.errors import InvalidDesiredState, Problem
from reconciler.model import DesiredState, Environment

ENVIRONMENTS_DIR: Final = "environments"
ENV_SUFFIXES: Final = (".yaml", ".yml")


def load_desired_state(root: str | os.PathLike[str], *, commit: str | None = None) -> DesiredState:
    """Read and validate the desired state under `root`.

    Raises InvalidDesiredState carrying every problem found; reads files only.
    """
    root_text = os.fspath(root)
    root_path = Path(root_text)
    if not root_path.is_dir():
        what = "is not a directory" if root_path.exists() else "does not exist"
        raise InvalidDesiredState([Problem(root_text, None, "", f"desired-state directory {what}")])

    problems: list[Problem] = []
    user_data_cache: dict[str, str] = {}
    settings = parse_settings(
        root_path, display_root=root_text, problems=problems, user_data_cache=user_data_cache
    )
    environments: list[Environment] = []
    env_dir = root_path / ENVIRONMENTS_DIR
    env_display = display_path(root_text, ENVIRONMENTS_DIR)
    # No environments/ directory means zero environments: the empty-desired-state
    # guard refuses that with its own exit code, so it is not a validation error.
    if env_dir.exists() and not env_dir.is_dir():
        problems.append(Problem(env_display, None, "", "must be a directory"))
    elif env_dir.is_dir() and not is_inside(root_path, env_dir):
        problems.append(
            Problem(env_display, None, "", "resolves outside the desired-state directory")
        )
    elif env_dir.is_dir():
        seen: dict[str, str] = {}
        for entry in sorted(env_dir.iterdir()):
            # Dotfiles are editor and tool droppings (.#prod.yaml), never environments.
            if entry.name.startswith(".") or entry.suffix not in ENV_SUFFIXES:
                continue
            display = display_path(root_text, ENVIRONMENTS_DIR, entry.name)
            reporter = Reporter(display, problems)
            if not is_inside(root_path, entry):
                reporter.add(
                    None, "", "resolves (through a symlink) outside the desired-state directory"
                )
                continue
            if not entry.is_file():
                continue
            name = entry.stem
            if name in seen:
                reporter.add(
                    None, "", f"environment {name!r} is also defined by {seen[name]}; keep one"
                )
                continue
            seen[name] = display
            doc = read_yaml_file(entry, display=display, problems=problems)
            if doc is None:
                continue
            env = parse_environment(
                reporter,
                doc,
                name=name,
                settings=settings,
                root=root_path,
                user_data_cache=user_data_cache,
            )
            if env is not None:
                environments.append(env)

    if problems:
        raise InvalidDesiredState(_ordered(problems))
    assert settings.owner is not None  # no problems means reconciler.yaml was complete
    return DesiredState(
        root=root_text,
        owner=settings.owner,
        providers=dict(settings.providers),
        environments=tuple(sorted(environments, key=lambda e: e.name)),
        policy=settings.policy,
        commit=commit,
        notifiers=settings.notifiers,
    )


def _ordered(problems: list[Problem]) -> list[Problem]:
    """Keep files in the order they were read; within a file, sort by line."""
    first_seen: dict[str, int] = {}
    for problem in problems:
        first_seen.setdefault(problem.file, len(first_seen))
    return sorted(
        problems,
        key=lambda p: (first_seen[p.file], p.line if p.line is not None else 0),
    )
