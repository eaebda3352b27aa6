"""Writes desired-state directories for end-to-end tests (real files, real git)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

IMAGE_V1 = "ami-03cf127a"
IMAGE_V2 = "ami-12c6146b"

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def write_desired(
    root: Path,
    *,
    endpoint: str,
    environments: dict[str, dict[str, dict[str, Any]]],
    owner: str = "acme",
    policy: dict[str, Any] | None = None,
    driver: str = "sandbox",
    credentials: dict[str, Any] | None = None,
    provider_options: dict[str, Any] | None = None,
    notifiers: list[dict[str, Any]] | None = None,
) -> Path:
    """Create (or overwrite) a desired-state directory with one provider `cloud`."""
    (root / "environments").mkdir(parents=True, exist_ok=True)
    (root / "userdata").mkdir(exist_ok=True)
    (root / "userdata" / "boot.sh").write_text("#!/bin/sh\necho booted\n")
    profile: dict[str, Any] = {"driver": driver, "region": "us-east-1", "endpoint": endpoint}
    if credentials:
        profile["credentials"] = credentials
    profile.update(provider_options or {})
    config = {
        "owner": owner,
        "providers": {"cloud": profile},
        "defaults": {
            "size": "t3.micro",
            "count": 1,
            "strategy": "blue-green",
            "keep_previous": "30m",
        },
        "policy": {"max_parallel": 4, "max_destroy_fraction": 0.5, **(policy or {})},
    }
    if notifiers:
        config["notifiers"] = notifiers
    (root / "reconciler.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for existing in (root / "environments").glob("*.yaml"):
        if existing.stem not in environments:
            existing.unlink()
    for env, services in environments.items():
        document = {"provider": "cloud", "services": services}
        (root / "environments" / f"{env}.yaml").write_text(
            yaml.safe_dump(document, sort_keys=False)
        )
    return root


def git_commit(root: Path, message: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True, env=env)
    subprocess.run(
        ["git", "-C", str(root), "commit", "-q", "--allow-empty", "-m", message],
        check=True,
        env=env,
    )
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()
