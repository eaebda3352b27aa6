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

from reconciler.desired.config import Settings, parse_settings
from reconciler.desired.environment import parse_environment
from reconciler.desired.files import directory_inside
from reconciler.desired.schema import Reporter
from reconciler.desired.userdata import display_path
from reconciler.desired.yamlsource import read_yaml_file
from reconciler.errors import InvalidDesiredState, Problem, Refused
from reconciler.model import DesiredState, Environment

ENVIRONMENTS_DIR: Final = "environments"
ENV_SUFFIXES: Final = (".yaml", ".yml")
# What git users keep in an otherwise empty directory: not an environment, not a mistake.
IGNORED_ENTRIES: Final = frozenset({".gitkeep", ".keep", ".gitignore"})


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
    if os.path.lexists(env_dir):
        try:
            directory_inside(root_path, env_dir)
        except Refused as exc:
            problems.append(Problem(env_display, None, "", f"{exc}; it must be a directory"))
        else:
            environments = _read_environments(
                root_path, root_text, settings=settings, problems=problems,
                user_data_cache=user_data_cache,
            )  # fmt: skip

    total = sum(service.count for env in environments for service in env.services)
    if total > settings.policy.max_total_instances:
        problems.append(Problem(
            display_path(root_text, "reconciler.yaml"), None, "policy.max_total_instances",
            f"the services ask for {total} instances in all, above "
            f"policy.max_total_instances ({settings.policy.max_total_instances}); raise it "
            "if this is intended",
        ))  # fmt: skip
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


def _read_environments(
    root: Path,
    root_text: str,
    *,
    settings: Settings,
    problems: list[Problem],
    user_data_cache: dict[str, str],
) -> list[Environment]:
    """Every entry of environments/ is an environment file, or a problem: a file that
    is skipped in silence would decommission its environment's instances."""
    environments: list[Environment] = []
    seen: dict[str, str] = {}
    for name in sorted(os.listdir(root / ENVIRONMENTS_DIR)):
        entry = root / ENVIRONMENTS_DIR / name
        display = display_path(root_text, ENVIRONMENTS_DIR, name)
        reporter = Reporter(display, problems)
        if name in IGNORED_ENTRIES:
            continue
        stem, suffix = os.path.splitext(name)
        if suffix not in ENV_SUFFIXES or name.startswith("."):
            reporter.add(
                None, "",
                "not an environment file: environments/ holds only <env>.yaml files (an "
                "environment whose file is renamed or moved would be decommissioned); "
                "move this elsewhere",
            )  # fmt: skip
            continue
        if stem in seen:
            reporter.add(None, "", f"environment {stem!r} is also defined by {seen[stem]}; "
                         "keep one")  # fmt: skip
            continue
        seen[stem] = display
        doc = read_yaml_file(entry, root=root, display=display, problems=problems)
        if doc is None:
            continue
        env = parse_environment(
            reporter, doc, name=stem, settings=settings, root=root, user_data_cache=user_data_cache
        )
        if env is not None:
            environments.append(env)
    return environments


def _ordered(problems: list[Problem]) -> list[Problem]:
    """Keep files in the order they were read; within a file, sort by line."""
    first_seen: dict[str, int] = {}
    for problem in problems:
        first_seen.setdefault(problem.file, len(first_seen))
    return sorted(
        problems,
        key=lambda p: (first_seen[p.file], p.line if p.line is not None else 0),
    )
