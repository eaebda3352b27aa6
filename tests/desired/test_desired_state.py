"""Tests for the desired-state loader: real files in tmp_path, one table of bad inputs.

Each bad case starts from a valid tree, replaces or adds a few files, and names the
problem it must produce: file, line, key path and a fragment of the message.
"""

from __future__ import annotations

import os
import shutil
import socket
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.desired import load_desired_state, parse_duration
from reconciler.errors import InvalidDesiredState, Problem
from reconciler.model import HealthSpec, SecretRef, Strategy

EXAMPLE = Path(__file__).resolve().parents[2] / "desired-state"

BASE_CONFIG = """\
owner: acme
providers:
  aws-east:
    driver: ec2
    region: us-east-1
    credentials:
      key: {env: AWS_ACCESS_KEY_ID}
      secret: {file: /run/credentials/aws_secret}
  local:
    driver: sandbox
defaults:
  size: t3.micro
"""

BASE_ENV = """\
provider: aws-east
services:
  web:
    image: ami-03cf127a
    count: 2
    user_data: userdata/web.sh
"""

# Profiles of drivers with their own settings, added before `defaults:` in BASE_CONFIG.
GCE_PROFILE = """\
  gcp:
    driver: gce
    region: us-central1-a
    project: acme-prod
    credentials:
      key: {env: GCE_ACCOUNT}
      secret: {file: gce_key}
"""
OPENSTACK_PROFILE = """\
  os:
    driver: openstack
    auth_url: https://keystone.example:5000
    tenant: web
    credentials: {key: {env: OS_USER}, secret: {env: OS_PASSWORD}}
"""

BASE_FILES: dict[str, str | bytes] = {
    "reconciler.yaml": BASE_CONFIG,
    "environments/production.yaml": BASE_ENV,
    "userdata/web.sh": "#!/bin/sh\necho hello\n",
}

Files = Mapping[str, str | bytes | None]


def write_tree(root: Path, files: Files) -> Path:
    """Write BASE_FILES overlaid with `files` (None deletes) under root."""
    merged: dict[str, str | bytes | None] = {**BASE_FILES, **files}
    for relative, content in merged.items():
        if content is None:
            continue
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content), encoding="utf-8")
    return root


def problems_of(root: Path) -> tuple[Problem, ...]:
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)
    return caught.value.problems


def env_with(service_body: str) -> str:
    """A production.yaml whose only service `web` has the given (indented) body."""
    return "provider: aws-east\nservices:\n  web:\n" + textwrap.indent(
        textwrap.dedent(service_body), "    "
    )


def config_with(extra: str) -> str:
    return BASE_CONFIG + extra


# ---------------------------------------------------------------- the example


def test_example_directory_loads() -> None:
    state = load_desired_state(EXAMPLE, commit="0123abc")
    assert state.owner == "demo"
    assert state.commit == "0123abc"
    assert state.root == str(EXAMPLE)
    assert list(state.providers) == ["sandbox"]
    assert state.providers["sandbox"].driver == "sandbox"
    assert state.providers["sandbox"].region == "us-east-1"
    assert [e.name for e in state.environments] == ["production", "staging"]
    counts = {(s.env, s.name): s.count for s in state.services()}
    assert counts == {
        ("production", "api"): 2,
        ("production", "web"): 2,
        ("staging", "web"): 1,
        ("staging", "worker"): 1,
    }
    web = state.service("production", "web")
    assert web is not None
    assert web.size == "t3.small"
    assert web.user_data_path == "userdata/web.sh"
    assert web.user_data is not None and web.user_data.startswith("#!/bin/sh")
    assert web.strategy is Strategy.BLUE_GREEN
    assert web.keep_previous == 1800.0
    assert web.health is None
    assert web.source_file == os.path.join(str(EXAMPLE), "environments", "production.yaml")
    worker = state.service("staging", "worker")
    assert worker is not None and worker.strategy is Strategy.RECREATE
    assert worker.size == "t3.micro"
    assert all(s.image == "ami-03cf127a" for s in state.services())
    assert state.policy.max_parallel == 8
    assert state.policy.max_destroy_fraction == 0.5


def test_example_fingerprints_are_stable_across_loads(tmp_path: Path) -> None:
    first = load_desired_state(EXAMPLE)
    second = load_desired_state(EXAMPLE)
    assert first == second
    copy = tmp_path / "copy"
    shutil.copytree(EXAMPLE, copy)
    moved = load_desired_state(copy)
    # The root's location is not part of any launch configuration.
    assert [s.fingerprint for s in moved.services()] == [s.fingerprint for s in first.services()]


# ---------------------------------------------------------------- valid trees


def test_base_tree_builds_full_model(tmp_path: Path) -> None:
    state = load_desired_state(write_tree(tmp_path, {}))
    aws = state.providers["aws-east"]
    assert aws.credentials == {
        "key": SecretRef("env", "AWS_ACCESS_KEY_ID"),
        "secret": SecretRef("file", "/run/credentials/aws_secret"),
    }
    assert state.providers["local"].region == "us-east-1"  # sandbox default
    assert state.policy.boot_timeout == 600.0
    (env,) = state.environments
    assert env.provider == "aws-east"
    assert env.source_file == os.path.join(str(tmp_path), "environments", "production.yaml")
    (web,) = env.services
    assert (web.env, web.name, web.provider, web.size, web.count) == (
        "production",
        "web",
        "aws-east",
        "t3.micro",
        2,
    )
    assert web.user_data == "#!/bin/sh\necho hello\n"


def test_credential_name_file_is_a_systemd_credential(tmp_path: Path) -> None:
    # LoadCredential=aws_secret:... puts the file in $CREDENTIALS_DIRECTORY; the
    # desired state names it without a path.
    config = BASE_CONFIG.replace("/run/credentials/aws_secret", "aws_secret")
    state = load_desired_state(write_tree(tmp_path, {CONF: config}))
    assert state.providers["aws-east"].credentials["secret"] == SecretRef("file", "aws_secret")


def fingerprint(tmp_path: Path, name: str, files: Files) -> str:
    root = write_tree(tmp_path / name, files)
    spec = load_desired_state(root).service("production", "web")
    assert spec is not None
    return spec.fingerprint


def test_fingerprint_changes_with_launch_config_not_count(tmp_path: Path) -> None:
    base = fingerprint(tmp_path, "base", {})
    assert fingerprint(tmp_path, "again", {}) == base
    scaled = env_with("image: ami-03cf127a\ncount: 7\nuser_data: userdata/web.sh\n")
    assert fingerprint(tmp_path, "count", {"environments/production.yaml": scaled}) == base
    image = env_with("image: ami-12c6146b\ncount: 2\nuser_data: userdata/web.sh\n")
    assert fingerprint(tmp_path, "image", {"environments/production.yaml": image}) != base
    size = env_with("image: ami-03cf127a\nsize: t3.large\nuser_data: userdata/web.sh\n")
    assert fingerprint(tmp_path, "size", {"environments/production.yaml": size}) != base
    script = {"userdata/web.sh": "#!/bin/sh\necho changed\n"}
    assert fingerprint(tmp_path, "userdata", script) != base
    keep = env_with("image: ami-03cf127a\nkeep_previous: 2h\nuser_data: userdata/web.sh\n")
    assert fingerprint(tmp_path, "keep", {"environments/production.yaml": keep}) == base


def test_service_settings_and_inheritance(tmp_path: Path) -> None:
    config = config_with(
        "policy: {max_parallel: 4, max_destroy_fraction: 0.25, boot_timeout: 5m, max_count: 10}\n"
    ).replace(
        "  size: t3.micro\n",
        "  size: t3.micro\n  count: 3\n  strategy: recreate\n  keep_previous: 1h30m\n"
        "  price_per_hour: 0.0104\n  health: {tcp: '{private_ip}:22'}\n",
    )
    env = """\
    provider: local
    services:
      zeta:
        image: ami-03cf127a
      alpha:
        image: ami-03cf127a
        count: 0
        strategy: blue-green
        keep_previous: 90s
        price_per_hour: 1
        health:
          http: "http://{private_ip}:8080/healthz"
          timeout: 2m
          interval: 10s
          warmup: 30s
          healthy_after: 3
    """
    root = write_tree(tmp_path, {"reconciler.yaml": config, "environments/production.yaml": env})
    state = load_desired_state(root)
    assert state.policy.max_parallel == 4
    assert state.policy.max_destroy_fraction == 0.25
    assert state.policy.boot_timeout == 300.0
    alpha, zeta = state.environments[0].services  # sorted by name
    assert alpha.name == "alpha" and zeta.name == "zeta"
    assert (alpha.count, alpha.strategy, alpha.keep_previous) == (0, Strategy.BLUE_GREEN, 90.0)
    assert alpha.price_per_hour == 1.0
    assert alpha.health == HealthSpec(
        kind="http",
        target="http://{private_ip}:8080/healthz",
        timeout=120.0,
        interval=10.0,
        warmup=30.0,
        healthy_after=3,
    )
    assert (zeta.count, zeta.strategy, zeta.keep_previous) == (3, Strategy.RECREATE, 5400.0)
    assert zeta.price_per_hour == 0.0104
    assert zeta.health == HealthSpec(kind="tcp", target="{private_ip}:22")
    assert zeta.provider == "local"
    assert zeta.user_data is None and zeta.user_data_path is None


@pytest.mark.parametrize(
    "content",
    [
        "",
        "# only a comment\n",
        "provider: aws-east\nservices: {}\n",
        "provider: aws-east\nservices:\n",
        "services: {}\n",
    ],
    ids=["empty", "comments", "services-empty", "services-null", "no-provider"],
)
def test_environment_without_services_loads_empty(tmp_path: Path, content: str) -> None:
    root = write_tree(tmp_path, {"environments/staging.yaml": content})
    state = load_desired_state(root)
    staging = next(e for e in state.environments if e.name == "staging")
    assert staging.services == ()
    assert staging.provider == ("aws-east" if "aws-east" in content else "")


def test_missing_environments_directory_gives_no_environments(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"environments/production.yaml": None})
    assert not (root / "environments").exists()
    assert load_desired_state(root).environments == ()


def test_yml_is_read_and_gitkeep_is_ignored(tmp_path: Path) -> None:
    files: Files = {
        "environments/staging.yml": "provider: local\nservices:\n  api: {image: ami-12c6146b}\n",
        "environments/.gitkeep": "",
    }
    state = load_desired_state(write_tree(tmp_path, files))
    assert [e.name for e in state.environments] == ["production", "staging"]


@pytest.mark.parametrize(
    "name", ["README.md", ".#production.yaml", "notes.txt", "staging.yaml.bak", "prod.YAML",
             "staging.json", ".staging.yaml", "staging"],
)  # fmt: skip
def test_anything_else_in_environments_is_an_error(tmp_path: Path, name: str) -> None:
    # Skipped in silence, a renamed environment file would decommission its instances.
    root = write_tree(tmp_path, {f"environments/{name}": "provider: local\nservices: {}\n"})
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)
    (problem,) = caught.value.problems
    assert problem.file == f"{root}/environments/{name}"
    assert "not an environment file" in problem.message


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "loop", "outside", "dangling"])
def test_an_environment_entry_that_is_no_regular_file_is_an_error(
    tmp_path: Path, kind: str
) -> None:
    root = write_tree(tmp_path / "state", {})
    entry = root / "environments" / "staging.yaml"
    if kind == "directory":
        entry.mkdir()
    elif kind == "fifo":
        os.mkfifo(entry)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(entry))
    elif kind == "loop":
        entry.symlink_to(entry)
    elif kind == "outside":
        (tmp_path / "elsewhere.yaml").write_text("provider: local\nservices: {}\n")
        entry.symlink_to(tmp_path / "elsewhere.yaml")
    else:
        entry.symlink_to(root / "environments" / "missing.yaml")
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)  # a FIFO must not block this
    (problem,) = caught.value.problems
    assert problem.file == f"{root}/environments/staging.yaml"
    expected = {"directory": "is a directory", "fifo": "is a FIFO", "socket": "is a socket",
                "loop": "symlink loop", "outside": "outside the desired-state directory",
                "dangling": "does not exist"}  # fmt: skip
    assert expected[kind] in problem.message


@pytest.mark.parametrize("kind", ["fifo", "loop", "device", "directory"])
@pytest.mark.parametrize(
    ("name", "file", "key"),
    [("reconciler.yaml", "reconciler.yaml", ""),
     ("userdata/web.sh", "environments/production.yaml", "services.web.user_data")],
)  # fmt: skip
def test_a_config_or_user_data_that_is_no_regular_file_is_an_error(
    tmp_path: Path, kind: str, name: str, file: str, key: str
) -> None:
    root = write_tree(tmp_path / "state", {name: None})
    target = root / name
    target.parent.mkdir(exist_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "loop":
        target.symlink_to(target)
    elif kind == "device":
        target.symlink_to("/dev/zero")  # outside, and endless if it were read
    else:
        target.mkdir()
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)  # a FIFO must not block this
    (problem,) = caught.value.problems
    assert (problem.file, problem.key) == (f"{root}/{file}", key)
    assert problem.line == (None if not key else 6)


def test_root_may_be_given_as_str_or_path(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {})
    assert load_desired_state(str(root)) == load_desired_state(root)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "30x", "1.5h", "m", "30m1h", "-5s", " 5s", "5 s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---------------------------------------------------------------- bad inputs


def _symlink_escape(root: Path) -> None:
    outside = root.parent / f"{root.name}-outside.sh"
    outside.write_text("#!/bin/sh\n")
    (root / "userdata" / "escape.sh").symlink_to(outside)


def _env_symlink_escape(root: Path) -> None:
    outside = root.parent / f"{root.name}-outside.yaml"
    outside.write_text("provider: aws-east\n")
    (root / "environments" / "elsewhere.yaml").symlink_to(outside)


def _remove_config(root: Path) -> None:
    (root / "reconciler.yaml").unlink()


PROD = "environments/production.yaml"
CONF = "reconciler.yaml"


@dataclass(frozen=True)
class Bad:
    id: str
    files: Files
    file: str  # relative to the root
    line: int | None
    key: str
    message: str  # a fragment the message must contain
    setup: Callable[[Path], None] | None = None
    absent: tuple[str, ...] = field(default=())  # text that must not appear anywhere


BAD_CASES = [
    Bad(
        "yaml-syntax-error",
        {PROD: "provider: aws-east\nservices:\n  web:\n    image: [ami-1\n    count: 1\n"},
        PROD,
        5,
        "",
        "YAML syntax error",
    ),
    Bad(
        "duplicate-key",
        {PROD: env_with("image: ami-03cf127a\ncount: 1\ncount: 2\n")},
        PROD,
        6,
        "services.web.count",
        "duplicate key 'count' (first on line 5, again on line 6)",
    ),
    Bad("unknown-key-top", {CONF: config_with("colour: blue\n")}, CONF, 13, "colour", "allowed"),
    Bad(
        "unknown-key-provider",
        {CONF: BASE_CONFIG.replace("    driver: sandbox\n", "    driver: sandbox\n    zone: a\n")},
        CONF,
        11,
        "providers.local.zone",
        "unknown key 'zone'; allowed keys: driver, region, endpoint, credentials",
    ),
    Bad(
        "unknown-key-defaults",
        {CONF: config_with("  image: ami-03cf127a\n")},
        CONF,
        13,
        "defaults.image",
        "unknown key 'image'",
    ),
    Bad(
        "unknown-key-policy",
        {CONF: config_with("policy:\n  max_paralel: 4\n")},
        CONF,
        14,
        "policy.max_paralel",
        "did you mean 'max_parallel'?",
    ),
    Bad(
        "unknown-key-env",
        {PROD: BASE_ENV + "region: eu-west-1\n"},
        PROD,
        7,
        "region",
        "allowed keys: provider, services",
    ),
    Bad(
        "unknown-key-service",
        {PROD: env_with("image: ami-03cf127a\nreplicas: 3\n")},
        PROD,
        5,
        "services.web.replicas",
        "unknown key 'replicas'",
    ),
    Bad(
        "unknown-key-health",
        {PROD: env_with("image: ami-03cf127a\nhealth:\n  tcp: ':22'\n  retries: 3\n")},
        PROD,
        7,
        "services.web.health.retries",
        "unknown key 'retries'",
    ),
    Bad(
        "unknown-credential-name",
        {CONF: BASE_CONFIG.replace("      key:", "      password: {env: PW}\n      key:")},
        CONF,
        7,
        "providers.aws-east.credentials.password",
        "allowed keys: key, secret, token",
    ),
    Bad(
        "unquoted-float-image",
        {PROD: env_with("image: 1.10\n")},
        PROD,
        4,
        "services.web.image",
        'must be a string, got a number (1.10); quote it if you mean the text: "1.10"',
    ),
    Bad(
        "numeric-size",
        {PROD: env_with("image: ami-03cf127a\nsize: 3\n")},
        PROD,
        5,
        "services.web.size",
        "must be a string, got an integer (3)",
    ),
    Bad(
        "negative-count",
        {PROD: env_with("image: ami-03cf127a\ncount: -1\n")},
        PROD,
        5,
        "services.web.count",
        "must be an integer between 0 and 10000, got -1",
    ),
    Bad(
        "count-above-max-count",
        {
            CONF: config_with("policy: {max_count: 5}\n"),
            PROD: env_with("image: ami-03cf127a\ncount: 6\n"),
        },
        PROD,
        5,
        "services.web.count",
        "count 6 is above policy.max_count (5)",
    ),
    Bad(
        "count-above-default-max-count",
        {PROD: env_with("image: ami-03cf127a\ncount: 101\n")},
        PROD,
        5,
        "services.web.count",
        "above policy.max_count (100)",
    ),
    Bad(
        "bool-count",
        {PROD: env_with("image: ami-03cf127a\ncount: true\n")},
        PROD,
        5,
        "services.web.count",
        "got a boolean (true)",
    ),
    Bad(
        "quoted-count",
        {PROD: env_with("image: ami-03cf127a\ncount: '3'\n")},
        PROD,
        5,
        "services.web.count",
        "got a string ('3')",
    ),
    Bad(
        "bare-number-duration",
        {PROD: env_with("image: ami-03cf127a\nkeep_previous: 30\n")},
        PROD,
        5,
        "services.web.keep_previous",
        'must be a duration string, got an integer (30); add a unit, e.g. "30s"',
    ),
    Bad(
        "bad-duration-unit",
        {PROD: env_with("image: ami-03cf127a\nkeep_previous: 30x\n")},
        PROD,
        5,
        "services.web.keep_previous",
        "invalid duration '30x'",
    ),
    Bad(
        "bad-boot-timeout",
        {CONF: config_with("policy:\n  boot_timeout: 0s\n")},
        CONF,
        14,
        "policy.boot_timeout",
        "must be longer than zero",
    ),
    Bad(
        "dotdot-user-data",
        {PROD: env_with("image: ami-03cf127a\nuser_data: userdata/../../etc/passwd\n")},
        PROD,
        5,
        "services.web.user_data",
        "contains '..'",
    ),
    Bad(
        "absolute-user-data",
        {PROD: env_with("image: ami-03cf127a\nuser_data: /etc/passwd\n")},
        PROD,
        5,
        "services.web.user_data",
        "is absolute",
    ),
    Bad(
        "symlink-escape-user-data",
        {PROD: env_with("image: ami-03cf127a\nuser_data: userdata/escape.sh\n")},
        PROD,
        5,
        "services.web.user_data",
        "outside the desired-state directory",
        setup=_symlink_escape,
    ),
    Bad(
        "missing-user-data",
        {PROD: env_with("image: ami-03cf127a\nuser_data: userdata/nope.sh\n")},
        PROD,
        5,
        "services.web.user_data",
        "'userdata/nope.sh' does not exist",
    ),
    Bad(
        "non-utf8-user-data",
        {"userdata/web.sh": b"#!/bin/sh\necho \xff\xfe\n"},
        PROD,
        6,
        "services.web.user_data",
        "is not valid UTF-8",
    ),
    Bad(
        "oversized-user-data",
        {"userdata/web.sh": "#" * (16 * 1024 + 1)},
        PROD,
        6,
        "services.web.user_data",
        "is 16385 bytes; the limit is 16384 bytes",
    ),
    Bad(
        "bad-default-user-data",
        {CONF: config_with("  user_data: ../outside.sh\n")},
        CONF,
        13,
        "defaults.user_data",
        "contains '..'",
    ),
    Bad(
        "non-utf8-yaml",
        {PROD: b"provider: aws-east\nservices:\n  web:\n    image: caf\xe9\n"},
        PROD,
        4,
        "",
        "not valid UTF-8",
    ),
    Bad(
        "oversized-yaml",
        {PROD: BASE_ENV + "#" * (1024 * 1024) + "\n"},
        PROD,
        None,
        "",
        "limited to 1 MiB",
    ),
    Bad(
        "python-tag",
        {PROD: env_with("image: !!python/object/apply:os.system ['echo pwned']\n")},
        PROD,
        4,
        "services.web.image",
        "explicit YAML tag '!!python/object/apply:os.system' is not allowed",
    ),
    Bad(
        "custom-tag",
        {PROD: env_with("image: !ami ami-03cf127a\n")},
        PROD,
        4,
        "services.web.image",
        "explicit YAML tag '!ami' is not allowed",
    ),
    Bad(
        "value-not-fitting-explicit-tag",
        {PROD: env_with("image: ami-03cf127a\ncount: !!int three\n")},
        PROD,
        5,
        "services.web.count",
        "value does not fit its explicit tag '!!int'",
    ),
    Bad(
        "date-image",
        {PROD: env_with("image: 2024-01-01\n")},
        PROD,
        4,
        "services.web.image",
        'must be a string, got a date (2024-01-01); quote it if you mean the text: "2024-01-01"',
    ),
    Bad(
        "impossible-date",
        {PROD: env_with("image: 2024-13-45\n")},
        PROD,
        4,
        "services.web.image",
        "YAML reads this value as a date but it is not a valid one",
    ),
    Bad(
        "control-character",
        {PROD: env_with("image: ami-03cf127a\x07\n")},
        PROD,
        4,
        "",
        "YAML cannot contain the control character U+0007",
    ),
    Bad(
        "yaml-bomb",
        {
            PROD: "provider: aws-east\n"
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "services: *c\n"
        },
        PROD,
        2,
        "a",
        "YAML anchor &a is not allowed: anchors and aliases are refused (YAML-bomb protection)",
    ),
    Bad(
        "alias",
        {
            PROD: env_with("image: ami-03cf127a\nsize: &s t3.micro\n")[:-1] + "\n  api:\n"
            "    image: ami-03cf127a\n    size: *s\n"
        },
        PROD,
        8,
        "services.api.size",
        "YAML alias *s is not allowed",
    ),
    Bad(
        "unknown-driver",
        {CONF: BASE_CONFIG.replace("driver: sandbox", "driver: vsphere")},
        CONF,
        10,
        "providers.local.driver",
        "no adapter exists for driver 'vsphere'; available drivers: ec2, sandbox, gce, azure,"
        " openstack",
    ),
    Bad(
        "unknown-provider-reference",
        {PROD: BASE_ENV.replace("provider: aws-east", "provider: aws-west")},
        PROD,
        1,
        "provider",
        "unknown provider 'aws-west'; providers declared in reconciler.yaml: aws-east, local",
    ),
    Bad(
        "literal-secret",
        {CONF: BASE_CONFIG.replace("{file: /run/credentials/aws_secret}", "wJalrXUtnFEMI/K7MDENG")},
        CONF,
        8,
        "providers.aws-east.credentials.secret",
        "secrets must be references",
        absent=("wJalrXUtnFEMI/K7MDENG",),
    ),
    Bad(
        "literal-numeric-secret",
        {CONF: BASE_CONFIG.replace("{file: /run/credentials/aws_secret}", "12345678901")},
        CONF,
        8,
        "providers.aws-east.credentials.secret",
        "never literal values",
        absent=("12345678901",),
    ),
    Bad(
        "literal-credentials-block",
        {
            CONF: BASE_CONFIG.replace(
                "    credentials:\n      key: {env: AWS_ACCESS_KEY_ID}\n"
                "      secret: {file: /run/credentials/aws_secret}\n",
                "    credentials: AKIAEXAMPLE:s3cr3t\n",
            )
        },
        CONF,
        6,
        "providers.aws-east.credentials",
        "secrets must be references",
        absent=("AKIAEXAMPLE", "s3cr3t"),
    ),
    Bad(
        "ec2-missing-secret",
        {CONF: BASE_CONFIG.replace("      secret: {file: /run/credentials/aws_secret}\n", "")},
        CONF,
        6,
        "providers.aws-east.credentials.secret",
        "driver ec2 needs credential 'secret'",
    ),
    Bad(
        "ec2-missing-region",
        {CONF: BASE_CONFIG.replace("    region: us-east-1\n", "")},
        CONF,
        3,
        "providers.aws-east.region",
        "required key 'region' is missing",
    ),
    Bad(
        "relative-secret-file",
        {CONF: BASE_CONFIG.replace("/run/credentials/aws_secret", "credentials/aws_secret")},
        CONF,
        8,
        "providers.aws-east.credentials.secret.file",
        "must be an absolute path",
    ),
    Bad(
        "parent-dir-secret-file",
        {CONF: BASE_CONFIG.replace("/run/credentials/aws_secret", "../aws_secret")},
        CONF,
        8,
        "providers.aws-east.credentials.secret.file",
        "or a systemd credential name without '/'",
    ),
    Bad(
        "dot-dot-secret-file",
        {CONF: BASE_CONFIG.replace("/run/credentials/aws_secret", "'..'")},
        CONF,
        8,
        "providers.aws-east.credentials.secret.file",
        "must be an absolute path",
    ),
    Bad(
        "bad-owner",
        {CONF: BASE_CONFIG.replace("owner: acme", "owner: -acme corp")},
        CONF,
        1,
        "owner",
        "invalid value '-acme corp'",
    ),
    Bad(
        "missing-owner",
        {CONF: BASE_CONFIG.replace("owner: acme\n", "")},
        CONF,
        1,
        "owner",
        "required key 'owner' is missing",
    ),
    Bad(
        "bad-env-name",
        {"environments/Prod_1.yaml": "provider: aws-east\nservices: {}\n"},
        "environments/Prod_1.yaml",
        None,
        "",
        "environment name 'Prod_1' (the file name) is invalid",
    ),
    Bad(
        "bad-service-name",
        {PROD: BASE_ENV.replace("  web:", "  Web_1:")},
        PROD,
        3,
        "services.Web_1",
        "invalid service name 'Web_1'",
    ),
    Bad(
        "merge-conflict-markers",
        {
            PROD: "provider: aws-east\nservices:\n  web:\n<<<<<<< HEAD\n    image: ami-1\n"
            "=======\n    image: ami-2\n>>>>>>> feature\n"
        },
        PROD,
        4,
        "",
        "git merge-conflict marker '<<<<<<<' found",
    ),
    Bad(
        "missing-reconciler-yaml",
        {},
        CONF,
        None,
        "",
        "reconciler.yaml not found",
        setup=_remove_config,
    ),
    Bad(
        "health-two-kinds",
        {PROD: env_with("image: ami-03cf127a\nhealth: {http: 'http://x/', tcp: 'x:1'}\n")},
        PROD,
        5,
        "services.web.health",
        "needs exactly one of http, tcp, command; got http, tcp",
    ),
    Bad(
        "health-healthy-after-zero",
        {PROD: env_with("image: ami-03cf127a\nhealth: {command: /bin/true, healthy_after: 0}\n")},
        PROD,
        5,
        "services.web.health.healthy_after",
        "must be an integer between 1 and 1000, got 0",
    ),
    Bad(
        "strategy-typo",
        {PROD: env_with("image: ami-03cf127a\nstrategy: blue_green\n")},
        PROD,
        5,
        "services.web.strategy",
        "must be one of blue-green, recreate, rolling; got 'blue_green' "
        "(did you mean 'blue-green'?)",
    ),
    Bad(
        "bad-endpoint",
        {
            CONF: BASE_CONFIG.replace(
                "    driver: sandbox\n", "    driver: sandbox\n    endpoint: ftp://127.0.0.1:5000\n"
            )
        },
        CONF,
        11,
        "providers.local.endpoint",
        "must be an http:// or https:// URL with a host",
    ),
    Bad(
        "endpoint-with-password",
        {
            CONF: BASE_CONFIG.replace(
                "    driver: sandbox\n",
                "    driver: sandbox\n    endpoint: http://admin:hunter2@127.0.0.1:5000\n",
            )
        },
        CONF,
        11,
        "providers.local.endpoint",
        "must not embed credentials",
        absent=("hunter2",),
    ),
    Bad(
        "env-top-level-list",
        {PROD: "- provider: aws-east\n- services: {}\n"},
        PROD,
        1,
        "",
        "must be a mapping with keys provider, services at the top level, got a list",
    ),
    Bad(
        "missing-image",
        {PROD: env_with("count: 1\n")},
        PROD,
        3,
        "services.web.image",
        "required key 'image' is missing",
    ),
    Bad(
        "no-size-anywhere",
        {CONF: BASE_CONFIG.replace("defaults:\n  size: t3.micro\n", "")},
        PROD,
        3,
        "services.web.size",
        "no size",
    ),
    Bad(
        "missing-provider-with-services",
        {PROD: BASE_ENV.replace("provider: aws-east\n", "")},
        PROD,
        1,
        "provider",
        "required key 'provider' is missing",
    ),
    Bad(
        "services-is-a-list",
        {PROD: "provider: aws-east\nservices:\n  - web\n"},
        PROD,
        2,
        "services",
        "must be a mapping of name -> service, got a list",
    ),
    Bad(
        "max-parallel-out-of-range",
        {CONF: config_with("policy: {max_parallel: 300}\n")},
        CONF,
        13,
        "policy.max_parallel",
        "must be an integer between 1 and 256, got 300",
    ),
    Bad(
        "max-destroy-fraction-above-one",
        {CONF: config_with("policy: {max_destroy_fraction: 1.5}\n")},
        CONF,
        13,
        "policy.max_destroy_fraction",
        "must be a number between 0 and 1, got 1.5",
    ),
    Bad(
        "negative-price",
        {PROD: env_with("image: ami-03cf127a\nprice_per_hour: -0.5\n")},
        PROD,
        5,
        "services.web.price_per_hour",
        "must be a number between 0 and 10000, got -0.5",
    ),
    Bad(
        "empty-providers",
        {CONF: BASE_CONFIG.split("providers:")[0] + "providers: {}\n"},
        CONF,
        2,
        "providers",
        "must declare at least one provider",
    ),
    Bad(
        "empty-reconciler-yaml",
        {CONF: "# nothing yet\n"},
        CONF,
        None,
        "",
        "reconciler.yaml is empty",
    ),
    Bad(
        "duplicate-environment-stem",
        {"environments/production.yml": "services: {}\n"},
        "environments/production.yml",
        None,
        "",
        "environment 'production' is also defined by",
    ),
    Bad(
        "env-file-symlink-escape",
        {},
        "environments/elsewhere.yaml",
        None,
        "",
        "outside the desired-state directory",
        setup=_env_symlink_escape,
    ),
    Bad(
        "multiple-documents",
        {PROD: BASE_ENV + "---\nprovider: local\n"},
        PROD,
        7,
        "",
        "YAML syntax error: expected a single document",
    ),
    # ---- what a driver needs and can do (reconciler.providers.drivers)
    Bad(
        "driver-setting-missing",
        {
            CONF: BASE_CONFIG.replace(
                "defaults:",
                GCE_PROFILE.replace("    project: acme-prod\n", "") + "defaults:",
            )
        },
        CONF,
        11,
        "providers.gcp.project",
        "required key 'project' is missing (driver gce: the Google Cloud project id)",
    ),
    Bad(
        "driver-setting-of-another-driver",
        {
            CONF: BASE_CONFIG.replace(
                "    region: us-east-1\n", "    region: us-east-1\n    project: x\n"
            )
        },
        CONF,
        6,
        "providers.aws-east.project",
        "unknown key",
    ),
    Bad(
        "driver-flag-not-a-boolean",
        {
            CONF: BASE_CONFIG.replace(
                "defaults:",
                OPENSTACK_PROFILE.replace(
                    "    tenant: web\n", '    tenant: web\n    config_drive: "yes"\n'
                )
                + "defaults:",
            )
        },
        CONF,
        15,
        "providers.os.config_drive",
        "true or false",
    ),
    Bad(
        "load-balancer-switch-where-the-driver-has-none",
        {
            CONF: BASE_CONFIG.replace(
                "defaults:",
                GCE_PROFILE + "defaults:",
            ),
            PROD: "provider: gcp\nservices:\n  web:\n    image: debian-12\n    size: e2-small\n"
            "    traffic: {libcloud-lb: web-lb}\n",
        },
        PROD,
        3,
        "services.web.traffic.libcloud-lb",
        "has no load balancer adapter",
    ),
    Bad(
        "rolling-where-user-data-cannot-be-read-back",
        {
            CONF: BASE_CONFIG.replace(
                "defaults:",
                OPENSTACK_PROFILE + "defaults:",
            ),
            PROD: "provider: os\nservices:\n  web:\n    image: ubuntu\n    size: m1.small\n"
            "    price_per_hour: 0.02\n    strategy: rolling\n",
        },
        PROD,
        3,
        "services.web.strategy",
        "rolling cannot be used with provider os (driver openstack)",
    ),
    Bad(
        "owner-too-long-for-gce-labels",
        {
            CONF: BASE_CONFIG.replace("owner: acme", "owner: " + "ACME" * 6).replace(
                "defaults:",
                GCE_PROFILE + "defaults:",
            )
        },
        CONF,
        1,
        "owner",
        "is 72 characters as a GCE label value (at most 63",
    ),
    Bad(
        "price-required-where-libcloud-has-none",
        {
            CONF: BASE_CONFIG.replace(
                "defaults:",
                OPENSTACK_PROFILE + "defaults:",
            ),
            PROD: "provider: os\nservices:\n  web:\n    image: ubuntu\n    size: m1.small\n",
        },
        PROD,
        3,
        "services.web.price_per_hour",
        "is required: provider os (driver openstack) has no prices in libcloud",
    ),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.id for c in BAD_CASES])
def test_bad_input_is_reported_with_location(tmp_path: Path, case: Bad) -> None:
    root = write_tree(tmp_path / "desired-state", case.files)
    if case.setup is not None:
        case.setup(root)
    problems = problems_of(root)
    expected_file = os.path.join(str(root), case.file)
    matching = [
        p
        for p in problems
        if p.file == expected_file and p.key == case.key and case.message in p.message
    ]
    assert matching, "\n".join(str(p) for p in problems)
    assert matching[0].line == case.line, str(matching[0])
    everything = "\n".join(str(p) for p in problems)
    for secret in case.absent:
        assert secret not in everything


def test_bad_case_table_is_large_and_distinct() -> None:
    assert len({c.id for c in BAD_CASES}) == len(BAD_CASES) >= 30


# ---------------------------------------------------------------- reporting


def test_all_problems_are_collected_in_one_pass(tmp_path: Path) -> None:
    config = BASE_CONFIG.replace("owner: acme", "owner: ''") + "policy: {max_parallel: 0}\n"
    env = env_with("image: 1.10\ncount: -1\nstrategy: rolling-update\n")
    staging = "provider: nowhere\nservices:\n  api: {image: ami-1, size: 2}\n"
    root = write_tree(
        tmp_path,
        {CONF: config, PROD: env, "environments/staging.yaml": staging},
    )
    keys = {(Path(p.file).name, p.key) for p in problems_of(root)}
    assert keys >= {
        ("reconciler.yaml", "owner"),
        ("reconciler.yaml", "policy.max_parallel"),
        ("production.yaml", "services.web.image"),
        ("production.yaml", "services.web.count"),
        ("production.yaml", "services.web.strategy"),
        ("staging.yaml", "provider"),
        ("staging.yaml", "services.api.size"),
    }


def test_problem_renders_file_line_key(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {PROD: env_with("image: ami-03cf127a\ncount: -1\n")})
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)
    expected = (
        f"{os.path.join(str(root), PROD)}:5: services.web.count: "
        "must be an integer between 0 and 10000, got -1"
    )
    assert str(caught.value) == expected


def test_problems_are_ordered_by_line_within_a_file(tmp_path: Path) -> None:
    env = env_with("image: ami-03cf127a\ncount: -1\nstrategy: x\n") + "  api:\n    count: 1\n"
    lines = [p.line or 0 for p in problems_of(write_tree(tmp_path, {PROD: env}))]
    assert lines == sorted(lines)


def test_user_data_contents_never_appear_in_problems(tmp_path: Path) -> None:
    script = "#!/bin/sh\nexport DB_PASSWORD=topsecret\n" + "#" * 17000
    problems = problems_of(write_tree(tmp_path, {"userdata/web.sh": script}))
    assert "topsecret" not in "\n".join(str(p) for p in problems)


def test_missing_root_directory(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nowhere")
    assert problems == (Problem(str(tmp_path / "nowhere"), None, "", problems[0].message),)
    assert "does not exist" in problems[0].message


def test_yaml_bomb_is_refused_quickly_with_few_problems(tmp_path: Path) -> None:
    layers = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    for i in range(1, 20):
        layers.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "provider: aws-east\n" + "\n".join(layers) + "\nservices: *a19\n"
    problems = problems_of(write_tree(tmp_path, {PROD: bomb}))
    assert len(problems) < 30
    assert any("more refused YAML constructs" in p.message for p in problems)


# ---------------------------------------------------------------- billing (issue 6)

_LOCAL = "  local:\n    driver: sandbox\n"


def test_provider_billing_defaults_and_settings(tmp_path: Path) -> None:
    state = load_desired_state(write_tree(tmp_path / "default", {}))
    assert (state.providers["local"].billing, state.providers["local"].billing_minimum) == (
        "per-second",
        60.0,
    )
    extra = "    billing: per-hour\n    billing_minimum: 2m\n"
    config = BASE_CONFIG.replace(_LOCAL, _LOCAL + extra)
    state = load_desired_state(write_tree(tmp_path / "set", {CONF: config}))
    assert (state.providers["local"].billing, state.providers["local"].billing_minimum) == (
        "per-hour",
        120.0,
    )


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("    billing: per-minute\n", "providers.local.billing", "per-second"),
        ("    billing_minimum: 60\n", "providers.local.billing_minimum", "duration"),
    ],
)
def test_provider_billing_errors_name_file_line_and_key(
    tmp_path: Path, extra: str, key: str, fragment: str
) -> None:
    config = BASE_CONFIG.replace(_LOCAL, _LOCAL + extra)
    (problem,) = problems_of(write_tree(tmp_path, {CONF: config}))
    assert problem.file.endswith(CONF) and (problem.line, problem.key) == (11, key)
    assert fragment in problem.message


def test_provider_request_timeout(tmp_path: Path) -> None:
    state = load_desired_state(write_tree(tmp_path / "default", {}))
    assert state.providers["local"].timeout == 30.0
    config = BASE_CONFIG.replace(_LOCAL, _LOCAL + "    timeout: 2m\n")
    state = load_desired_state(write_tree(tmp_path / "set", {CONF: config}))
    assert state.providers["local"].timeout == 120.0
    config = BASE_CONFIG.replace(_LOCAL, _LOCAL + "    timeout: 30\n")
    (problem,) = problems_of(write_tree(tmp_path / "bad", {CONF: config}))
    assert (problem.line, problem.key) == (11, "providers.local.timeout")


@pytest.mark.parametrize(("value", "ok"), [("user-data", True), ("startup-script", True),
                                            ("cloud-init", False)])  # fmt: skip
def test_the_gce_user_data_key_is_one_of_two(tmp_path: Path, value: str, ok: bool) -> None:
    profile = GCE_PROFILE + f"    user_data_key: {value}\n"
    root = write_tree(tmp_path, {"reconciler.yaml": BASE_CONFIG.replace(
        "defaults:", profile + "defaults:")})  # fmt: skip
    if ok:
        load_desired_state(root)
        return
    (problem,) = problems_of(root)
    assert problem.key == "providers.gcp.user_data_key"
    assert "must be one of startup-script, user-data, got 'cloud-init'" in problem.message
