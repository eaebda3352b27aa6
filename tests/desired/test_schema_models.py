"""The pydantic schema (reconciler.desired.models) against the loader's error quality.

Two documents use every key every model declares. Each test then damages them one
key or one value at a time, so a key added to a model is covered without being
listed here: a misspelt key must be named with its line and a "did you mean" for the
right key, a value of the wrong shape must be reported at its line in our words (never
pydantic's, which quote the input), and nothing else may be said about that key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.desired import load_desired_state, models
from reconciler.errors import InvalidDesiredState, Problem

CONFIG = """\
owner: acme
providers:
  cloud:
    driver: sandbox
    region: us-east-1
    endpoint: http://127.0.0.1:5000
    credentials:
      key:
        env: KEY_VARIABLE
      secret:
        file: /run/credentials/secret
      token:
        file: token_credential
    billing: per-hour
    billing_minimum: 1m
    timeout: 30s
defaults:
  size: t3.micro
  count: 1
  strategy: blue-green
  keep_previous: 10m
  user_data: userdata/boot.sh
  health:
    http: "http://{private_ip}:8080/healthz"
    timeout: 5s
    interval: 1s
    warmup: 0s
    healthy_after: 2
  price_per_hour: 0.01
  traffic:
    command: "switch {id}"
    switch: after 30m
  batch: 1
policy:
  max_parallel: 4
  max_destroy_fraction: 0.5
  boot_timeout: 5m
  max_count: 20
  thrash_limit: 3
  thrash_window: 1h
  max_total_instances: 100
notifiers:
  - webhook: http://127.0.0.1:9/hook
    secret:
      env: HOOK_SECRET
    events:
      - rollback
    timeout: 5s
  - command: "notify-send reconciler"
"""

ENVIRONMENT = """\
provider: cloud
frozen: false
services:
  web:
    image: ami-03cf127a
    frozen: false
    size: t3.small
    count: 2
    strategy: rolling
    keep_previous: 5m
    user_data: userdata/boot.sh
    health:
      tcp: "{private_ip}:22"
      command: "true"
    price_per_hour: 0.02
    traffic:
      libcloud-lb: web-lb
    batch: 1
  db:
    image: ami-03cf127a
    strategy: recreate
    volume:
      size: 8
      device: /dev/sdf
      type: gp3
      snapshot: never
"""
# `health` above takes one probe; the second is removed before use (see _documents).

FREE_NAMES = frozenset({"cloud", "web", "db"})  # names the operator chooses, not keys
KEY_LINE = re.compile(r"^(?P<indent>\s*(?:- )?)(?P<key>[a-z_-]+):(?P<rest>.*)$")
PYDANTIC_WORDING = (
    "Input should", "pydantic", "Field required", "Extra inputs", "validation error",
)  # fmt: skip


def _documents() -> dict[str, str]:
    env = ENVIRONMENT.replace('      command: "true"\n', "")
    return {"reconciler.yaml": CONFIG, "environments/production.yaml": env}


def _write(root: Path, documents: dict[str, str]) -> Path:
    for relative, text in {**documents, "userdata/boot.sh": "#!/bin/sh\n"}.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def _problems(root: Path) -> list[Problem]:
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)
    return caught.value.problems


def _key_lines(*, with_a_value: bool = False) -> list[tuple[str, int, str]]:
    """(file, line number, key) for every key written in the two documents; with
    `with_a_value`, only keys whose value is on their own line (not a nested block)."""
    found = []
    for relative, text in _documents().items():
        for number, line in enumerate(text.splitlines(), start=1):
            match = KEY_LINE.match(line)
            if not match or match["key"] in FREE_NAMES:
                continue
            if with_a_value and not match["rest"].strip():
                continue
            found.append((relative, number, match["key"]))
    return found


def _model_keys(model: type[models.Document]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def test_the_documents_are_valid_and_use_every_key_of_every_model(tmp_path: Path) -> None:
    desired = load_desired_state(_write(tmp_path, _documents()))
    assert sorted(s.name for e in desired.environments for s in e.services) == ["db", "web"]
    written = {key for _file, _line, key in _key_lines()} | {"command"}  # the second probe
    declared: set[str] = set()
    for value in vars(models).values():
        if isinstance(value, type) and issubclass(value, models.Document):
            declared |= _model_keys(value)
    assert declared <= written, f"keys no test here writes: {sorted(declared - written)}"


@pytest.mark.parametrize(("relative", "number", "key"), _key_lines())
def test_a_misspelt_key_is_named_with_its_line_and_the_key_meant(
    tmp_path: Path, relative: str, number: int, key: str
) -> None:
    documents = _documents()
    lines = documents[relative].splitlines()
    typo = key + key[-1]
    lines[number - 1] = lines[number - 1].replace(f"{key}:", f"{typo}:", 1)
    documents[relative] = "\n".join(lines) + "\n"
    problems = _problems(_write(tmp_path, documents))
    unknown = [p for p in problems if f"unknown key {typo!r}" in p.message]
    assert len(unknown) == 1, problems
    assert unknown[0].file.endswith(relative)
    assert unknown[0].line == number
    assert unknown[0].key.endswith(typo)
    assert f"(did you mean {key!r}?)" in unknown[0].message
    for problem in problems:
        assert not any(word in problem.message for word in PYDANTIC_WORDING), problem


@pytest.mark.parametrize(("relative", "number", "key"), _key_lines(with_a_value=True))
@pytest.mark.parametrize("wrong", ["[1, 2]", "{nested: 1}"], ids=["a-list", "a-mapping"])
def test_a_value_of_the_wrong_shape_is_reported_at_its_line_in_our_words(
    tmp_path: Path, relative: str, number: int, key: str, wrong: str
) -> None:
    documents = _documents()
    lines = documents[relative].splitlines()
    match = KEY_LINE.match(lines[number - 1])
    assert match is not None
    lines[number - 1] = f"{match['indent']}{key}: {wrong}"
    documents[relative] = "\n".join(lines) + "\n"
    problems = _problems(_write(tmp_path, documents))
    at_line = [p for p in problems if p.line == number and p.file.endswith(relative)]
    assert at_line, problems
    # The problem is the key's own, or an item's of it (`events[0]`), never another's.
    own = re.compile(rf"(^|[.\]]){re.escape(key)}(\[\d+\])*$")
    assert all(own.search(p.key) for p in at_line), at_line
    for problem in problems:
        assert not any(word in problem.message for word in PYDANTIC_WORDING), problem
        assert "nested" not in problem.message or "a mapping" in problem.message


def test_models_never_show_a_secret_reference_given_as_a_literal(tmp_path: Path) -> None:
    documents = _documents()
    documents["reconciler.yaml"] = CONFIG.replace(
        "      key:\n        env: KEY_VARIABLE\n", "      key: AKIA-literal-secret-value\n"
    )
    problems = _problems(_write(tmp_path, documents))
    assert [p.key for p in problems] == ["providers.cloud.credentials.key"]
    assert "AKIA" not in problems[0].message
    assert "never literal values" in problems[0].message
