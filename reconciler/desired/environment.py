"""One `environments/<env>.yaml` file: its provider and its services.

Owns: validating an environment document through `EnvironmentFile` (desired.models),
what depends on reconciler.yaml (a size from the service or the defaults, what the
provider's adapter can do), applying defaults (service value, then `defaults:` in
reconciler.yaml, then the built-ins), and building `ServiceSpec`s with their
fingerprints.
Must not: refuse an environment for having no services (an empty desired state is
a guard's decision, with its own exit code), or read anything but user data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Final, TypeVar

from reconciler.desired.config import Settings
from reconciler.desired.fingerprint import compute_fingerprint
from reconciler.desired.models import (
    IDENTITY_HINT,
    EnvironmentFile,
    LoadContext,
    ServiceModel,
)
from reconciler.desired.schema import Reporter, join
from reconciler.desired.validation import failed_keys, validate
from reconciler.desired.yamlsource import YamlDocument, YMap, YScalar
from reconciler.model import (
    IDENTITY_NAME,
    Environment,
    ProviderProfile,
    ServiceSpec,
    Strategy,
    TrafficSpec,
)
from reconciler.providers.drivers import DRIVER_SPECS

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
    if not IDENTITY_NAME.fullmatch(name):
        reporter.add(
            None, "", f"environment name {name!r} (the file name) is invalid: {IDENTITY_HINT}"
        )
    if doc.root is None:
        return _unless_reported(reporter, before, Environment(name, "", (), reporter.file))
    context = LoadContext(
        root=root,
        user_data_cache=user_data_cache,
        max_count=settings.max_count,
        providers=settings.provider_names,
    )
    env_file = validate(EnvironmentFile, doc.root, reporter=reporter, context=context)
    if not isinstance(doc.root, YMap):
        return None
    top = doc.root
    services_node = top.entries.get("services")
    # A services value that is not a mapping counts as services: the provider is
    # still required, so both problems show at once.
    has_services = (
        services_node is not None
        and not (isinstance(services_node, YMap) and not services_node.entries)
        and not (isinstance(services_node, YScalar) and services_node.value is None)
    )
    if has_services and "provider" not in top.entries:
        reporter.add(top.line, "provider", "required key 'provider' is missing")

    if env_file is not None:
        provider = env_file.provider
        services = env_file.services or {}
        env_frozen = env_file.frozen
    else:
        provider, services, env_frozen = None, _salvage_services(services_node, context), False
    specs: list[ServiceSpec] = []
    for service_name, model in services.items():
        node = services_node.entries[service_name] if isinstance(services_node, YMap) else None
        assert isinstance(node, YMap)
        spec = _build_service(
            reporter,
            model,
            node=node,
            env=name,
            name=service_name,
            provider=provider,
            settings=settings,
        )
        if spec is not None:
            specs.append(spec)
    if isinstance(services_node, YMap):
        _report_missing_sizes(reporter, services_node, settings)
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


def _salvage_services(node: object, context: LoadContext) -> dict[str, ServiceModel]:
    """The services that are valid in a file that has problems (already reported), so
    that what only their provider can refuse is reported too."""
    if not isinstance(node, YMap):
        return {}
    found: dict[str, ServiceModel] = {}
    for name, service in node.entries.items():
        model, _ = (
            failed_keys(ServiceModel, service, context=context)
            if isinstance(service, YMap)
            else (None, set())
        )
        if model is not None and IDENTITY_NAME.fullmatch(name):
            found[name] = model
    return found


def _report_missing_sizes(reporter: Reporter, services: YMap, settings: Settings) -> None:
    """A service needs a size, its own or the default one; not said again when either
    was written but wrong (that problem is already reported)."""
    if settings.defaults.size is not None or "size" in settings.defaults_invalid:
        return
    for name, node in services.entries.items():
        if IDENTITY_NAME.fullmatch(name) and isinstance(node, YMap) and "size" not in node.entries:
            reporter.add(
                node.line,
                join(join("services", name), "size"),
                "no size: set it on the service or as defaults.size in reconciler.yaml",
            )


def _unless_reported(reporter: Reporter, before: int, env: Environment) -> Environment | None:
    return env if len(reporter.problems) == before else None


def _build_service(
    reporter: Reporter,
    own: ServiceModel,
    *,
    node: YMap,
    env: str,
    name: str,
    provider: str | None,
    settings: Settings,
) -> ServiceSpec | None:
    defaults = settings.defaults
    size = _inherit(own.size, defaults.size)
    profile = settings.providers.get(provider) if provider is not None else None
    if size is None or profile is None:
        return None  # the reason is already reported (here, in reconciler.yaml, or above)
    strategy = _inherit(own.strategy, defaults.strategy) or BUILTIN_STRATEGY
    if own.volume is not None:
        # A volume makes the service a singleton: what it implies is not taken from
        # `defaults:`, and what it forbids is refused when written on the service.
        strategy = own.strategy or Strategy.RECREATE
    health = _inherit(own.health, defaults.health)
    traffic_model = _inherit(own.traffic, defaults.traffic)
    traffic = traffic_model.to_spec() if traffic_model is not None else None
    price = _inherit(own.price_per_hour, defaults.price_per_hour)
    path = join("services", name)
    capable = _capable(
        reporter, profile, price=price, traffic=traffic, rolling=strategy is Strategy.ROLLING,
        line=node.line, path=path,
    )  # fmt: skip
    if not capable:
        return None
    blue_green = strategy is Strategy.BLUE_GREEN
    if traffic is not None and traffic.waits and not blue_green and own.traffic is None:
        # A `switch:` from `defaults:` is for the blue-green services it reaches.
        traffic = replace(traffic, manual=False, switch_after=None)
    if traffic is not None and traffic.waits and strategy is not Strategy.BLUE_GREEN:
        # Only blue-green keeps the old generation serving while the new one waits.
        reporter.add(
            node.line,
            join(path, "traffic.switch"),
            f"needs strategy blue-green, not {strategy.value}: a generation can wait for its "
            "switch only beside an old one that keeps serving",
        )
        return None
    count = _inherit(own.count, defaults.count)
    if own.volume is not None:
        count = own.count if own.count is not None else 1
        if not _singleton(reporter, profile, strategy, count, line=node.line, path=path):
            return None
    keep = _inherit(own.keep_previous, defaults.keep_previous)
    batch = _inherit(own.batch, defaults.batch)
    user_data = _inherit(own.user_data, defaults.user_data)
    rel_path, contents = user_data if user_data is not None else (None, None)
    return ServiceSpec(
        env=env,
        name=name,
        provider=profile.name,
        image=own.image,
        size=size,
        count=count if count is not None else BUILTIN_COUNT,
        strategy=strategy,
        keep_previous=keep if keep is not None else BUILTIN_KEEP_PREVIOUS,
        fingerprint=compute_fingerprint(
            provider=profile.name,
            driver=profile.driver,
            region=profile.region,
            image=own.image,
            size=size,
            user_data=contents,
        ),
        user_data_path=rel_path,
        user_data=contents,
        health=health.to_spec() if health is not None else None,
        price_per_hour=price,
        source_file=reporter.file,
        traffic=traffic,
        batch=batch if batch is not None else 1,
        frozen=own.frozen,
        volume=own.volume.to_spec() if own.volume is not None else None,
    )


def _singleton(
    reporter: Reporter, profile: ProviderProfile, strategy: Strategy, count: int, *,
    line: int, path: str,
) -> bool:
    """A service with a volume: count 1, strategy recreate, on a driver that hands volumes over."""
    ok = True
    if count != 1:
        reporter.add(line, join(path, "count"), f"must be 1 for a service with a volume (got "
                     f"{count}): one instance writes the volume at a time")  # fmt: skip
        ok = False
    if strategy is not Strategy.RECREATE:
        reporter.add(line, join(path, "strategy"), f"must be recreate for a service with a "
                     f"volume (got {strategy.value}): the volume moves from the old instance, "
                     "stopped first, to the new one")  # fmt: skip
        ok = False
    if not DRIVER_SPECS[profile.driver].volumes:
        reporter.add(line, join(path, "volume"), f"provider {profile.name} (driver "
                     f"{profile.driver}) cannot hand a volume over yet; volumes work with "
                     "the ec2 and sandbox drivers")  # fmt: skip
        ok = False
    return ok


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


def _inherit(value: _T | None, default: _T | None) -> _T | None:
    """The service's own value, else the one from `defaults:`."""
    return value if value is not None else default
