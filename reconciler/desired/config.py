"""`reconciler.yaml`: owner, provider profiles, service defaults and policy.

Owns: validating the top-level file through `ConfigFile` (desired.models), the checks
that depend on a provider's driver (its own settings, a required region, the
credentials it needs, whether every cloud can hold the owner as a tag), and building
`ProviderProfile`s, `Policy` and notifiers, plus the defaults and `max_count` the
environment files need, as far as they are valid when the file has problems.
Must not: resolve a secret (credentials are references; their values are read by
the provider adapter at run time), echo anything found under `credentials`, or
contact any provider.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from reconciler.desired.models import (
    PROVIDER_NAME,
    ConfigFile,
    Defaults,
    LoadContext,
    PolicyModel,
    ProviderModel,
)
from reconciler.desired.schema import (
    Reporter,
    check_keys,
    get_bool,
    get_str,
    join,
)
from reconciler.desired.userdata import display_path
from reconciler.desired.validation import failed_keys, validate, without
from reconciler.desired.yamlsource import YMap, YNode, YScalar, read_yaml_file
from reconciler.errors import Problem
from reconciler.model import NotifierSpec, Policy, ProviderProfile
from reconciler.providers.drivers import DRIVER_SPECS, DriverSpec

CONFIG_FILE: Final = "reconciler.yaml"
SHARED_KEYS: Final = tuple(Defaults.model_fields)


@dataclass
class Settings:
    """What the environment files need from reconciler.yaml, as far as it is valid."""

    owner: str | None = None
    providers: dict[str, ProviderProfile] = field(default_factory=dict)
    # None when the declared names are unknown (file missing or unusable): then
    # environment files are not told their provider is undeclared.
    provider_names: frozenset[str] | None = None
    defaults: Defaults = field(default_factory=Defaults)
    # Defaults present but wrong: a service inheriting one is not reported again.
    defaults_invalid: frozenset[str] = frozenset(SHARED_KEYS)
    policy: Policy = field(default_factory=Policy)
    max_count: int | None = None  # None: unknown, so counts are not checked against it
    notifiers: tuple[NotifierSpec, ...] = ()


def parse_settings(
    root: Path, *, display_root: str, problems: list[Problem], user_data_cache: dict[str, str]
) -> Settings:
    """Validate `<root>/reconciler.yaml`; problems go to `problems`."""
    display = display_path(display_root, CONFIG_FILE)
    reporter = Reporter(display, problems)
    path = root / CONFIG_FILE
    if not os.path.lexists(path):
        reporter.add(
            None,
            "",
            f"{CONFIG_FILE} not found in the desired-state directory: it declares the "
            "owner and the providers",
        )
        return Settings()
    doc = read_yaml_file(path, root=root, display=display, problems=problems)
    if doc is None:
        return Settings()
    if doc.root is None:
        reporter.add(None, "", f"{CONFIG_FILE} is empty: it must declare owner and providers")
        return Settings()
    top = doc.root if isinstance(doc.root, YMap) else None
    context = LoadContext(root=root, user_data_cache=user_data_cache)
    # Counts in `defaults` are checked against the policy of the same file.
    policy_node = top.entries.get("policy") if top is not None else None
    policy = _quiet_policy(policy_node, context)
    context.max_count = policy.max_count if policy is not None else None

    config = validate(ConfigFile, doc.root, reporter=reporter, context=context)
    if top is None:
        return Settings()
    settings = Settings(max_count=context.max_count)
    if policy is not None:
        settings.policy = policy.to_policy()
    if config is not None:
        settings.owner = config.owner
        settings.notifiers = tuple(n.to_spec() for n in config.notifiers)
        settings.defaults, settings.defaults_invalid = config.defaults, frozenset()
    else:
        settings.defaults, settings.defaults_invalid = _salvage_defaults(
            top.entries.get("defaults"), context
        )
    providers_node = top.entries.get("providers")
    if isinstance(providers_node, YMap):
        _check_providers(reporter, providers_node, settings=settings, context=context)
    owner_node = top.entries.get("owner")
    if owner_node is not None:
        owner = config.owner if config is not None else _plain_text(owner_node)
        if owner is not None and PROVIDER_NAME.fullmatch(owner):
            _check_owner_fits(reporter, owner_node.line, owner, settings)
    return settings


def _quiet_policy(node: YNode | None, context: LoadContext) -> PolicyModel | None:
    if node is None:
        return PolicyModel()
    policy, _ = failed_keys(PolicyModel, node, context=context)
    return policy


def _salvage_defaults(node: YNode | None, context: LoadContext) -> tuple[Defaults, frozenset[str]]:
    """The valid part of `defaults:` and the keys that were wrong (reported already)."""
    if node is None:
        return Defaults(), frozenset()
    if not isinstance(node, YMap):
        if isinstance(node, YScalar) and node.value is None:
            return Defaults(), frozenset()
        return Defaults(), frozenset(SHARED_KEYS)
    defaults, wrong = failed_keys(Defaults, node, context=context)
    if defaults is not None:
        return defaults, frozenset()
    rest, _ = failed_keys(Defaults, without(node, wrong), context=context)
    return (rest or Defaults()), frozenset(wrong if rest is not None else SHARED_KEYS)


def _plain_text(node: YNode) -> str | None:
    return node.value if isinstance(node, YScalar) and isinstance(node.value, str) else None


def _check_providers(
    reporter: Reporter, providers: YMap, *, settings: Settings, context: LoadContext
) -> None:
    """Each profile's driver-dependent keys; builds the profiles that are wholly valid."""
    settings.provider_names = frozenset(providers.entries)
    for name, node in providers.entries.items():
        if not PROVIDER_NAME.fullmatch(name) or not isinstance(node, YMap):
            continue  # reported by the model
        path = join("providers", name)
        driver = _plain_text(node.entries["driver"]) if "driver" in node.entries else None
        spec = DRIVER_SPECS.get(driver or "")
        ok = _check_driver_keys(reporter, node, spec, path=path)
        options, options_ok = (
            _parse_driver_settings(reporter, node, spec, path=path) if spec else ({}, False)
        )
        model, _ = failed_keys(ProviderModel, node, context=context)
        if model is None or spec is None or not ok or not options_ok:
            continue
        settings.providers[name] = ProviderProfile(
            name=name,
            driver=model.driver,
            region=model.region if model.region is not None else spec.default_region,
            endpoint=model.endpoint,
            credentials=model.credentials.refs() if model.credentials is not None else {},
            billing=model.billing,
            billing_minimum=model.billing_minimum,
            timeout=model.timeout if model.timeout is not None else ProviderProfile.timeout,
            options=options,
        )


def _check_driver_keys(
    reporter: Reporter, profile: YMap, spec: DriverSpec | None, *, path: str
) -> bool:
    """Unknown keys (the driver says which of its own it takes), a region the driver
    needs, and the credentials it needs; False when any was reported."""
    before = len(reporter.problems)
    common = ProviderModel.COMMON_KEYS
    if spec is not None:
        check_keys(reporter, profile, path=path, allowed=(*common, *spec.all_settings))
    elif "driver" in profile.entries:
        # The driver is unknown: its own settings cannot be judged, only the common keys.
        every = (k for s in DRIVER_SPECS.values() for k in s.all_settings)
        check_keys(reporter, profile, path=path, allowed=(*common, *every))
    else:
        check_keys(reporter, profile, path=path, allowed=common)
    if spec is None:
        return False
    entries = profile.entries
    if "region" not in entries and spec.region_required:
        reporter.add(
            profile.line,
            join(path, "region"),
            f"required key 'region' is missing (driver {spec.name}: the {spec.region_meaning})",
        )
    if "credentials" in entries:
        # Judged on the keys written, valid or not: a bad reference is its own problem.
        node = entries["credentials"]
        empty = isinstance(node, YScalar) and node.value is None
        present = frozenset(node.entries) if isinstance(node, YMap) else frozenset()
        for cred in spec.credentials if isinstance(node, YMap) or empty else ():
            if cred not in present:
                reporter.add(
                    node.line,
                    join(path, f"credentials.{cred}"),
                    f"driver {spec.name} needs credential {cred!r} "
                    "({env: VARNAME} or {file: /path})",
                )
    elif spec.credentials:
        needed = " and ".join(spec.credentials)
        reporter.add(
            profile.line,
            join(path, "credentials"),
            f"required key 'credentials' is missing: driver {spec.name} needs {needed}",
        )
    return len(reporter.problems) == before


def _check_owner_fits(reporter: Reporter, line: int, owner: str, settings: Settings) -> None:
    """The owner is a tag value on every instance: each cloud must be able to hold it."""
    for profile in settings.providers.values():
        check = DRIVER_SPECS[profile.driver].owner_problem
        problem = check(owner) if check is not None else None
        if problem is not None:
            reporter.add(
                line, "owner", f"{problem}: provider {profile.name} (driver {profile.driver})"
            )


def _parse_driver_settings(
    reporter: Reporter, profile: YMap, spec: DriverSpec, *, path: str
) -> tuple[dict[str, str], bool]:
    """The driver's own settings as strings (flags as "true"/"false"), and whether all
    were valid. Settings are plain values, never secrets: those go under credentials."""
    options: dict[str, str] = {}
    ok = True
    for key in spec.settings:
        if key not in profile.entries:
            hint = spec.setting_hints.get(key)
            reporter.add(
                profile.line,
                join(path, key),
                f"required key {key!r} is missing (driver {spec.name}"
                + (f": {hint})" if hint else ")"),
            )
            ok = False
    for key in (*spec.settings, *spec.optional_settings):
        if key in profile.entries:
            text = get_str(reporter, profile.entries[key], path=join(path, key))
            if text is None:
                ok = False
            elif not text:
                reporter.add(profile.entries[key].line, join(path, key), "must not be empty")
                ok = False
            elif key in spec.setting_choices and text not in spec.setting_choices[key]:
                choices = ", ".join(spec.setting_choices[key])
                reporter.add(profile.entries[key].line, join(path, key),
                             f"must be one of {choices}, got {text!r}")  # fmt: skip
                ok = False
            else:
                options[key] = text
    for key in spec.flags:
        if key in profile.entries:
            flag = get_bool(reporter, profile.entries[key], path=join(path, key))
            if flag is None:
                ok = False
            else:
                options[key] = "true" if flag else "false"
    return options, ok
