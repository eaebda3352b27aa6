"""The per-service settings shared by `defaults:` and each service in an environment.

Owns: validating size, count, strategy, keep_previous, user_data, health and
price_per_hour wherever they appear, and remembering which were present but wrong
(so a service inheriting a broken default is not reported twice).
Must not: decide inheritance order or build `ServiceSpec`s (the environment
module does), or read any file other than referenced user data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from reconciler.desired import limits
from reconciler.desired.schema import (
    Reporter,
    check_keys,
    get_choice,
    get_duration,
    get_int,
    get_map,
    get_number,
    get_str,
    join,
)
from reconciler.desired.templates import command_problem, template_problem
from reconciler.desired.userdata import read_user_data
from reconciler.desired.yamlsource import YMap, YNode
from reconciler.model import HealthSpec, Strategy, TrafficSpec

SHARED_KEYS: Final = (
    "size",
    "count",
    "strategy",
    "keep_previous",
    "user_data",
    "health",
    "price_per_hour",
    "traffic",
    "batch",
)
TRAFFIC_KINDS: Final = ("command", "libcloud-lb")
HEALTH_KINDS: Final = ("http", "tcp", "command")
HEALTH_KEYS: Final = (*HEALTH_KINDS, "timeout", "interval", "warmup", "healthy_after")


@dataclass
class ServiceFields:
    """Values found for the shared keys; `invalid` names keys present but wrong."""

    size: str | None = None
    count: int | None = None
    strategy: Strategy | None = None
    keep_previous: float | None = None
    user_data: tuple[str, str] | None = None  # (relative path, contents)
    health: HealthSpec | None = None
    price_per_hour: float | None = None
    traffic: TrafficSpec | None = None
    batch: int | None = None
    invalid: set[str] = field(default_factory=set)


def parse_service_fields(
    reporter: Reporter,
    node: YMap,
    *,
    path: str,
    root: Path,
    max_count: int | None,
    user_data_cache: dict[str, str],
) -> ServiceFields:
    """Validate the shared keys present in `node` (other keys are the caller's)."""
    found = ServiceFields()
    entries = node.entries

    def note(key: str, value: object) -> None:
        if value is None:
            found.invalid.add(key)

    if "size" in entries:
        found.size = get_str(reporter, entries["size"], path=join(path, "size"))
        note("size", found.size)
    if "count" in entries:
        found.count = get_int(
            reporter, entries["count"], path=join(path, "count"), minimum=0,
            maximum=limits.MAX_COUNT_HARD,
        )  # fmt: skip
        if found.count is not None and max_count is not None and found.count > max_count:
            reporter.add(
                entries["count"].line,
                join(path, "count"),
                f"count {found.count} is above policy.max_count ({max_count}); raise "
                "policy.max_count in reconciler.yaml if this is intended",
            )
            found.count = None
        note("count", found.count)
    if "strategy" in entries:
        choice = get_choice(
            reporter,
            entries["strategy"],
            path=join(path, "strategy"),
            choices=[s.value for s in Strategy],
        )
        found.strategy = Strategy(choice) if choice is not None else None
        note("strategy", found.strategy)
    if "keep_previous" in entries:
        found.keep_previous = get_duration(
            reporter, entries["keep_previous"], path=join(path, "keep_previous"),
            maximum=limits.MAX_KEEP_PREVIOUS,
        )  # fmt: skip
        note("keep_previous", found.keep_previous)
    if "user_data" in entries:
        found.user_data = read_user_data(
            reporter,
            entries["user_data"],
            path=join(path, "user_data"),
            root=root,
            cache=user_data_cache,
        )
        note("user_data", found.user_data)
    if "health" in entries:
        found.health = parse_health(reporter, entries["health"], path=join(path, "health"))
        note("health", found.health)
    if "price_per_hour" in entries:
        found.price_per_hour = get_number(
            reporter, entries["price_per_hour"], path=join(path, "price_per_hour"), minimum=0,
            maximum=limits.MAX_PRICE_PER_HOUR,
        )  # fmt: skip
        note("price_per_hour", found.price_per_hour)
    if "traffic" in entries:
        found.traffic = parse_traffic(reporter, entries["traffic"], path=join(path, "traffic"))
        note("traffic", found.traffic)
    if "batch" in entries:
        found.batch = get_int(
            reporter, entries["batch"], path=join(path, "batch"), minimum=1,
            maximum=limits.MAX_BATCH,
        )  # fmt: skip
        note("batch", found.batch)
    return found


def parse_traffic(reporter: Reporter, node: YNode, *, path: str) -> TrafficSpec | None:
    """Validate a `traffic:` mapping: exactly one switch, e.g. `{libcloud-lb: web-lb}`."""
    traffic = get_map(reporter, node, path=path)
    if traffic is None:
        return None
    check_keys(reporter, traffic, path=path, allowed=TRAFFIC_KINDS)
    kinds = [kind for kind in TRAFFIC_KINDS if kind in traffic.entries]
    if len(kinds) != 1:
        got = f"got {', '.join(kinds)}" if kinds else "got none"
        reporter.add(traffic.line, path, f"needs exactly one of {', '.join(TRAFFIC_KINDS)}; {got}")
        return None
    target = get_str(reporter, traffic.entries[kinds[0]], path=join(path, kinds[0]))
    if target is None:
        return None
    if not target.strip():
        reporter.add(traffic.entries[kinds[0]].line, join(path, kinds[0]), "must not be empty")
        return None
    problem = command_problem(target) if kinds[0] == "command" else None
    if problem is not None:
        reporter.add(traffic.entries[kinds[0]].line, join(path, kinds[0]), problem)
        return None
    return TrafficSpec(kind=kinds[0], target=target)


def _health_target_problem(kind: str, target: str) -> str | None:
    """Why a health target cannot be probed, checked here so that no rollout launches
    instances only to fail on it: a template, and what its kind needs."""
    problem = template_problem(target)
    if problem is not None:
        return problem
    if kind == "http" and not target.startswith(("http://", "https://")):
        return "must be an http:// or https:// URL"
    if kind == "tcp":
        host, colon, port = target.rpartition(":")
        port_ok = port.isdigit() and 1 <= int(port) <= 65535
        if not colon or not host or not port_ok:
            return "must be HOST:PORT with a port from 1 to 65535, e.g. {private_ip}:5432"
    if kind == "command":
        return command_problem(target)
    return None


def parse_health(reporter: Reporter, node: YNode, *, path: str) -> HealthSpec | None:
    """Validate a `health:` mapping: exactly one probe kind plus optional timings."""
    health = get_map(reporter, node, path=path)
    if health is None:
        return None
    check_keys(reporter, health, path=path, allowed=HEALTH_KEYS)
    kinds = [kind for kind in HEALTH_KINDS if kind in health.entries]
    if len(kinds) != 1:
        got = f"got {', '.join(kinds)}" if kinds else "got none"
        reporter.add(health.line, path, f"needs exactly one of {', '.join(HEALTH_KINDS)}; {got}")
        return None
    kind = kinds[0]
    kind_path = join(path, kind)
    target = get_str(reporter, health.entries[kind], path=kind_path)
    ok = target is not None
    problem = _health_target_problem(kind, target) if target is not None else None
    if problem is not None:
        reporter.add(health.entries[kind].line, kind_path, problem)
        ok = False
    spec = HealthSpec(kind=kind, target=target or "")
    timings: dict[str, float] = {}
    for key, positive, maximum in (
        ("timeout", True, limits.MAX_HEALTH_TIMEOUT),
        ("interval", True, limits.MAX_HEALTH_INTERVAL),
        ("warmup", False, limits.MAX_HEALTH_WARMUP),
    ):
        if key in health.entries:
            seconds = get_duration(
                reporter, health.entries[key], path=join(path, key), positive=positive,
                maximum=maximum,
            )  # fmt: skip
            if seconds is None:
                ok = False
            else:
                timings[key] = seconds
    healthy_after = spec.healthy_after
    if "healthy_after" in health.entries:
        parsed = get_int(
            reporter, health.entries["healthy_after"], path=join(path, "healthy_after"), minimum=1,
            maximum=limits.MAX_HEALTHY_AFTER,
        )  # fmt: skip
        ok = ok and parsed is not None
        healthy_after = parsed or healthy_after
    if not ok:
        return None
    return HealthSpec(
        kind=kind,
        target=spec.target,
        timeout=timings.get("timeout", spec.timeout),
        interval=timings.get("interval", spec.interval),
        warmup=timings.get("warmup", spec.warmup),
        healthy_after=healthy_after,
    )
