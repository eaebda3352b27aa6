"""One `environments/<env>.yaml` file: its provider and its services.

Owns: validating an environment document, applying defaults (service value, then
`defaults:` in reconciler.yaml, then the built-ins), and building `ServiceSpec`s
with their fingerprints.
Must not: refuse an environment for having no services (an empty desired state is
a guard's decision, with its own exit code), or read anything but user data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Final, TypeVar

from reconciler.desired.config import Settings
from reconciler.desired.fields import SHARED_KEYS, ServiceFields, parse_service_fields
from reconciler.desired.fingerprint import compute_fingerprint
from reconciler.desired.schema import (
    Reporter,
    check_keys,
    get_bool,
    get_map,
    get_str,
    join,
    require,
)
from reconciler.desired.yamlsource import YamlDocument, YMap
from reconciler.model import (
    IDENTITY_NAME,
    Environment,
    ProviderProfile,
    ServiceSpec,
    Strategy,
    TrafficSpec,
)
from reconciler.providers.drivers import DRIVER_SPECS

ENV_KEYS: Final = ("provider", "services", "frozen")
SERVICE_KEYS: Final = ("image", "frozen", *SHARED_KEYS)
NAME = IDENTITY_NAME
NAME_HINT: Final = "use 1 to 31 lowercase letters, digits or '-', starting with a letter or digit"

BUILTIN_COUNT: Final = 1
BUILTIN_STRATEGY: Final = Strategy.BLUE_GREEN
BUILTIN_KEEP_PREVIOUS: Final = 30 * 60.0

_T = TypeVar("_T")


def parse_environment(
    reporter: Reporter,
    doc: YamlDocument,
    *,
    name: str,
    settings: Settings,
    root: Path,
    user_data_cache: dict[str, str],
) -> Environment | None:
    """Validate one environment document; return None if anything in it was wrong."""
    before = len(reporter.problems)
    if not NAME.fullmatch(name):
        reporter.add(None, "", f"environment name {name!r} (the file name) is invalid: {NAME_HINT}")
    if doc.root is None:
        return _unless_reported(reporter, before, Environment(name, "", (), reporter.file))
    top = get_map(
        reporter, doc.root, path="", what="a mapping with keys provider, services at the top level"
    )
    if top is None:
        return None
    check_keys(reporter, top, path="", allowed=ENV_KEYS)

    services_node = top.entries.get("services")
    services: YMap | None = YMap({}, top.line)
    if services_node is not None:
        services = get_map(
            reporter,
            services_node,
            path="services",
            what="a mapping of name -> service",
            allow_null=True,
        )
    has_services = services is None or bool(services.entries)
    env_frozen = False
    if "frozen" in top.entries:
        env_frozen = get_bool(reporter, top.entries["frozen"], path="frozen") or False

    provider: str | None = None
    provider_node = (
        require(reporter, top, "provider", path="") if has_services else top.entries.get("provider")
    )
    if provider_node is not None:
        provider = get_str(reporter, provider_node, path="provider")
        known = settings.provider_names
        if provider is not None and known is not None and provider not in known:
            declared = ", ".join(sorted(known)) or "none"
            reporter.add(
                provider_node.line,
                "provider",
                f"unknown provider {provider!r}; providers declared in reconciler.yaml: {declared}",
            )
            provider = None
    if services is None:
        return None

    specs: list[ServiceSpec] = []
    for service_name, node in services.entries.items():
        path = join("services", service_name)
        if not NAME.fullmatch(service_name):
            reporter.add(node.line, path, f"invalid service name {service_name!r}: {NAME_HINT}")
            continue
        spec = _parse_service(
            reporter,
            node_map=get_map(reporter, node, path=path, what="a mapping with at least image"),
            env=name,
            name=service_name,
            provider=provider,
            settings=settings,
            root=root,
            user_data_cache=user_data_cache,
        )
        if spec is not None:
            specs.append(spec)
    if env_frozen:
        specs = [replace(spec, frozen=True) for spec in specs]
    env = Environment(
        name=name,
        provider=provider or "",
        services=tuple(sorted(specs, key=lambda s: s.name)),
        source_file=reporter.file,
        frozen=env_frozen,
    )
    return _unless_reported(reporter, before, env)


def _unless_reported(reporter: Reporter, before: int, env: Environment) -> Environment | None:
    return env if len(reporter.problems) == before else None


def _parse_service(
    reporter: Reporter,
    *,
    node_map: YMap | None,
    env: str,
    name: str,
    provider: str | None,
    settings: Settings,
    root: Path,
    user_data_cache: dict[str, str],
) -> ServiceSpec | None:
    if node_map is None:
        return None
    path = join("services", name)
    check_keys(reporter, node_map, path=path, allowed=SERVICE_KEYS)
    image_node = require(reporter, node_map, "image", path=path)
    image = None if image_node is None else get_str(reporter, image_node, path=join(path, "image"))
    frozen = False
    if "frozen" in node_map.entries:
        parsed = get_bool(reporter, node_map.entries["frozen"], path=join(path, "frozen"))
        frozen = bool(parsed)
    own = parse_service_fields(
        reporter,
        node_map,
        path=path,
        root=root,
        max_count=settings.max_count,
        user_data_cache=user_data_cache,
    )
    defaults = settings.defaults

    size, size_known = _inherit("size", own.size, defaults.size, own=own, defaults=defaults)
    if size is None and size_known:
        reporter.add(
            node_map.line,
            join(path, "size"),
            "no size: set it on the service or as defaults.size in reconciler.yaml",
        )
    count, _ = _inherit("count", own.count, defaults.count, own=own, defaults=defaults)
    strategy, _ = _inherit("strategy", own.strategy, defaults.strategy, own=own, defaults=defaults)
    keep, _ = _inherit(
        "keep_previous", own.keep_previous, defaults.keep_previous, own=own, defaults=defaults
    )
    user_data, _ = _inherit(
        "user_data", own.user_data, defaults.user_data, own=own, defaults=defaults
    )
    health, _ = _inherit("health", own.health, defaults.health, own=own, defaults=defaults)
    price, _ = _inherit(
        "price_per_hour", own.price_per_hour, defaults.price_per_hour, own=own, defaults=defaults
    )
    traffic, _ = _inherit("traffic", own.traffic, defaults.traffic, own=own, defaults=defaults)
    batch, _ = _inherit("batch", own.batch, defaults.batch, own=own, defaults=defaults)

    profile = settings.providers.get(provider) if provider is not None else None
    if image is None or size is None or profile is None or own.invalid:
        return None  # the reason is already reported (here, in reconciler.yaml, or above)
    capable = _capable(
        reporter, profile, price=price, traffic=traffic, rolling=strategy is Strategy.ROLLING,
        line=node_map.line, path=path,
    )  # fmt: skip
    if not capable:
        return None
    rel_path, contents = user_data if user_data is not None else (None, None)
    return ServiceSpec(
        env=env,
        name=name,
        provider=profile.name,
        image=image,
        size=size,
        count=count if count is not None else BUILTIN_COUNT,
        strategy=strategy or BUILTIN_STRATEGY,
        keep_previous=keep if keep is not None else BUILTIN_KEEP_PREVIOUS,
        fingerprint=compute_fingerprint(
            provider=profile.name,
            driver=profile.driver,
            region=profile.region,
            image=image,
            size=size,
            user_data=contents,
        ),
        user_data_path=rel_path,
        user_data=contents,
        health=health,
        price_per_hour=price,
        source_file=reporter.file,
        traffic=traffic,
        batch=batch if batch is not None else 1,
        frozen=frozen,
    )


def _capable(
    reporter: Reporter,
    profile: ProviderProfile,
    *,
    price: float | None,
    traffic: TrafficSpec | None,
    rolling: bool,
    line: int,
    path: str,
) -> bool:
    """Refuse here, before any apply, what the provider's adapter cannot do."""
    driver = DRIVER_SPECS[profile.driver]
    ok = True
    if price is None and not driver.prices:
        reporter.add(
            line,
            join(path, "price_per_hour"),
            f"is required: provider {profile.name} (driver {profile.driver}) has no prices in "
            "libcloud, so the ledger could not cost its instances; set price_per_hour on the "
            "service or in defaults",
        )
        ok = False
    if traffic is not None and traffic.kind == "libcloud-lb" and not driver.load_balancer:
        reporter.add(
            line,
            join(path, "traffic.libcloud-lb"),
            f"provider {profile.name} (driver {profile.driver}) has no load balancer adapter; "
            "use traffic: {command: ...} for this provider",
        )
        ok = False
    if rolling and not driver.reads_user_data:
        reporter.add(
            line,
            join(path, "strategy"),
            f"rolling cannot be used with provider {profile.name} (driver {profile.driver}): "
            "rolling back a failed batch relaunches the replaced instances with their user "
            "data, which this cloud shows to administrators only; use blue-green",
        )
        ok = False
    return ok


def _inherit(
    key: str, value: _T | None, default: _T | None, *, own: ServiceFields, defaults: ServiceFields
) -> tuple[_T | None, bool]:
    """Return (value, known); known is False when it would come from a key already
    reported as wrong, so the caller does not report "missing" on top of it."""
    if value is not None:
        return value, True
    if key in own.invalid:
        return None, False
    if default is not None:
        return default, True
    if key in defaults.invalid:
        return None, False
    return None, True
