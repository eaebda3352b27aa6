"""`reconciler.yaml`: owner, provider profiles, service defaults and policy.

Owns: validating the top-level file and building `ProviderProfile`, `SecretRef`
and `Policy`, plus the defaults and `max_count` the environment files need.
Must not: resolve a secret (credentials are references; their values are read by
the provider adapter at run time), echo anything found under `credentials`, or
contact any provider.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from reconciler.desired import limits
from reconciler.desired.fields import SHARED_KEYS, ServiceFields, parse_service_fields
from reconciler.desired.notifiers import parse_notifiers
from reconciler.desired.schema import (
    Reporter,
    check_keys,
    get_bool,
    get_choice,
    get_duration,
    get_int,
    get_map,
    get_number,
    get_str,
    is_rejected,
    join,
    require,
)
from reconciler.desired.userdata import display_path
from reconciler.desired.yamlsource import YMap, YNode, YScalar, read_yaml_file
from reconciler.errors import Problem
from reconciler.model import NotifierSpec, Policy, ProviderProfile, SecretRef
from reconciler.providers.drivers import DRIVER_SPECS, DRIVERS, DriverSpec

CONFIG_FILE: Final = "reconciler.yaml"
TOP_KEYS: Final = ("owner", "providers", "defaults", "policy", "notifiers")
PROVIDER_KEYS: Final = (
    "driver",
    "region",
    "endpoint",
    "credentials",
    "billing",
    "billing_minimum",
    "timeout",
)
BILLING_MODES: Final = ("per-second", "per-hour")
POLICY_KEYS: Final = (
    "max_parallel",
    "max_destroy_fraction",
    "boot_timeout",
    "max_count",
    "thrash_limit",
    "thrash_window",
    "max_total_instances",
)
CREDENTIAL_NAMES: Final = ("key", "secret", "token")
SECRET_SOURCES: Final = ("env", "file")
# Each driver's own settings (project, tenant, ...) are allowed beside these keys;
# reconciler.providers.drivers says which driver takes which.
DEFAULT_MAX_COUNT: Final = 100

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_HINT: Final = "use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECRET_HINT: Final = (
    "secrets must be references such as {env: VARNAME} or {file: /path}, never literal "
    "values (the value given is not shown)"
)


@dataclass
class Settings:
    """What the environment files need from reconciler.yaml, as far as it is valid."""

    owner: str | None = None
    providers: dict[str, ProviderProfile] = field(default_factory=dict)
    # None when the declared names are unknown (file missing or unusable): then
    # environment files are not told their provider is undeclared.
    provider_names: frozenset[str] | None = None
    defaults: ServiceFields = field(default_factory=lambda: ServiceFields(invalid=set(SHARED_KEYS)))
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
    top = get_map(
        reporter,
        doc.root,
        path="",
        what="a mapping with keys " + ", ".join(TOP_KEYS) + " at the top level",
    )
    if top is None:
        return Settings()
    check_keys(reporter, top, path="", allowed=TOP_KEYS)
    settings = Settings()

    owner = require(reporter, top, "owner", path="")
    if owner is not None:
        settings.owner = get_str(
            reporter, owner, path="owner", pattern=NAME, pattern_hint=f"owner: {NAME_HINT}"
        )

    policy, settings.max_count = _parse_policy(reporter, top.entries.get("policy"))
    if policy is not None:
        settings.policy = policy

    providers = require(reporter, top, "providers", path="")
    if providers is not None:
        _parse_providers(reporter, providers, settings=settings)
    if owner is not None and settings.owner is not None:
        _check_owner_fits(reporter, owner.line, settings)

    notifiers = top.entries.get("notifiers")
    if notifiers is not None:
        settings.notifiers = (
            parse_notifiers(reporter, notifiers, parse_secret=_parse_secret_ref) or ()
        )

    defaults = top.entries.get("defaults")
    settings.defaults = ServiceFields()
    if defaults is not None:
        defaults_map = get_map(reporter, defaults, path="defaults", allow_null=True)
        if defaults_map is None:
            settings.defaults.invalid = set(SHARED_KEYS)
        else:
            check_keys(reporter, defaults_map, path="defaults", allowed=SHARED_KEYS)
            settings.defaults = parse_service_fields(
                reporter,
                defaults_map,
                path="defaults",
                root=root,
                max_count=settings.max_count,
                user_data_cache=user_data_cache,
            )
    return settings


def _parse_policy(reporter: Reporter, node: YNode | None) -> tuple[Policy | None, int | None]:
    """Return (Policy, max_count); either is None when it could not be validated."""
    if node is None:
        return Policy(), DEFAULT_MAX_COUNT
    policy = get_map(reporter, node, path="policy", allow_null=True)
    if policy is None:
        return None, None
    check_keys(reporter, policy, path="policy", allowed=POLICY_KEYS)
    entries = policy.entries
    built = Policy()
    max_parallel: int | None = built.max_parallel
    fraction: float | None = built.max_destroy_fraction
    boot_timeout: float | None = built.boot_timeout
    max_count: int | None = DEFAULT_MAX_COUNT
    if "max_parallel" in entries:
        max_parallel = get_int(
            reporter, entries["max_parallel"], path="policy.max_parallel", minimum=1,
            maximum=limits.MAX_PARALLEL,
        )  # fmt: skip
    if "max_destroy_fraction" in entries:
        fraction = get_number(
            reporter,
            entries["max_destroy_fraction"],
            path="policy.max_destroy_fraction",
            minimum=0,
            maximum=1,
        )
    if "boot_timeout" in entries:
        boot_timeout = get_duration(
            reporter, entries["boot_timeout"], path="policy.boot_timeout", positive=True,
            maximum=limits.MAX_BOOT_TIMEOUT,
        )  # fmt: skip
    if "max_count" in entries:
        max_count = get_int(
            reporter, entries["max_count"], path="policy.max_count", minimum=1,
            maximum=limits.MAX_COUNT_POLICY,
        )  # fmt: skip
    thrash_limit: int | None = built.thrash_limit
    thrash_window: float | None = built.thrash_window
    if "thrash_limit" in entries:
        thrash_limit = get_int(
            reporter, entries["thrash_limit"], path="policy.thrash_limit", minimum=1,
            maximum=limits.MAX_THRASH_LIMIT,
        )  # fmt: skip
    if "thrash_window" in entries:
        thrash_window = get_duration(
            reporter, entries["thrash_window"], path="policy.thrash_window", positive=True,
            maximum=limits.MAX_THRASH_WINDOW,
        )  # fmt: skip
    max_total: int | None = built.max_total_instances
    if "max_total_instances" in entries:
        max_total = get_int(
            reporter, entries["max_total_instances"], path="policy.max_total_instances",
            minimum=1, maximum=limits.MAX_TOTAL_INSTANCES,
        )  # fmt: skip
    if (
        max_parallel is None
        or fraction is None
        or boot_timeout is None
        or thrash_limit is None
        or thrash_window is None
        or max_total is None
    ):
        return None, max_count
    policy_value = Policy(
        max_parallel=max_parallel,
        max_destroy_fraction=fraction,
        boot_timeout=boot_timeout,
        thrash_limit=thrash_limit,
        thrash_window=thrash_window,
        max_total_instances=max_total,
    )
    return policy_value, max_count


def _parse_providers(reporter: Reporter, node: YNode, *, settings: Settings) -> None:
    providers = get_map(reporter, node, path="providers", what="a mapping of name -> profile")
    if providers is None:
        return
    settings.provider_names = frozenset(providers.entries)
    if not providers.entries:
        reporter.add(providers.line, "providers", "must declare at least one provider")
    for name, profile_node in providers.entries.items():
        path = join("providers", name)
        if not NAME.fullmatch(name):
            reporter.add(profile_node.line, path, f"invalid provider name {name!r}: {NAME_HINT}")
            continue
        profile = _parse_profile(reporter, name, profile_node, path=path)
        if profile is not None:
            settings.providers[name] = profile


def _parse_profile(
    reporter: Reporter, name: str, node: YNode, *, path: str
) -> ProviderProfile | None:
    profile = get_map(reporter, node, path=path, what="a mapping with at least driver")
    if profile is None:
        return None
    entries = profile.entries
    ok = True
    driver: str | None = None
    driver_node = require(reporter, profile, "driver", path=path)
    if driver_node is not None:
        driver = get_str(reporter, driver_node, path=join(path, "driver"))
        if driver is not None and driver not in DRIVERS:
            reporter.add(
                driver_node.line,
                join(path, "driver"),
                f"no adapter exists for driver {driver!r}; available drivers: {', '.join(DRIVERS)}",
            )
            driver = None
    spec = DRIVER_SPECS.get(driver or "")
    if spec is not None:
        check_keys(reporter, profile, path=path, allowed=(*PROVIDER_KEYS, *spec.all_settings))
    elif driver_node is not None:
        # The driver is unknown: its own settings cannot be judged, only the common keys.
        check_keys(
            reporter,
            profile,
            path=path,
            allowed=(*PROVIDER_KEYS, *(k for s in DRIVER_SPECS.values() for k in s.all_settings)),
        )
    else:
        check_keys(reporter, profile, path=path, allowed=PROVIDER_KEYS)
    region: str | None = None
    if "region" in entries:
        region = get_str(reporter, entries["region"], path=join(path, "region"))
        ok = ok and region is not None
    elif spec is not None and not spec.region_required:
        region = spec.default_region
    elif spec is not None:
        reporter.add(
            profile.line,
            join(path, "region"),
            f"required key 'region' is missing (driver {driver}: the {spec.region_meaning})",
        )
        ok = False
    options: dict[str, str] = {}
    if spec is not None:
        options, options_ok = _parse_driver_settings(reporter, profile, spec, path=path)
        ok = ok and options_ok
    endpoint: str | None = None
    if "endpoint" in entries:
        endpoint = _parse_endpoint(reporter, entries["endpoint"], path=join(path, "endpoint"))
        ok = ok and endpoint is not None
    credentials: dict[str, SecretRef] = {}
    if "credentials" in entries:
        parsed = _parse_credentials(
            reporter, entries["credentials"], path=join(path, "credentials")
        )
        if parsed is None:
            ok = False
        else:
            credentials, complete = parsed
            ok = ok and complete
            # Judged on the keys written, valid or not: a bad reference is its own problem.
            present = _present_keys(entries["credentials"])
            for cred in spec.credentials if spec is not None else ():
                if cred not in present:
                    reporter.add(
                        entries["credentials"].line,
                        join(path, f"credentials.{cred}"),
                        f"driver {driver} needs credential {cred!r} "
                        "({env: VARNAME} or {file: /path})",
                    )
                    ok = False
    elif spec is not None and spec.credentials:
        needed = " and ".join(spec.credentials)
        reporter.add(
            profile.line,
            join(path, "credentials"),
            f"required key 'credentials' is missing: driver {driver} needs {needed}",
        )
        ok = False
    billing, billing_minimum, billing_ok = _parse_billing(reporter, entries, path=path)
    timeout = ProviderProfile.timeout
    if "timeout" in entries:
        parsed_timeout = get_duration(
            reporter, entries["timeout"], path=join(path, "timeout"), positive=True,
            maximum=limits.MAX_PROVIDER_TIMEOUT,
        )  # fmt: skip
        ok = ok and parsed_timeout is not None
        timeout = parsed_timeout or timeout
    if driver is None or not ok or not billing_ok:
        return None
    return ProviderProfile(
        name=name,
        driver=driver,
        region=region,
        endpoint=endpoint,
        credentials=credentials,
        billing=billing,
        billing_minimum=billing_minimum,
        timeout=timeout,
        options=options,
    )


def _check_owner_fits(reporter: Reporter, line: int | None, settings: Settings) -> None:
    """The owner is a tag value on every instance: each cloud must be able to hold it."""
    for profile in settings.providers.values():
        check = DRIVER_SPECS[profile.driver].owner_problem
        problem = check(settings.owner) if check is not None and settings.owner else None
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


def _parse_billing(
    reporter: Reporter, entries: Mapping[str, YNode], *, path: str
) -> tuple[str, float, bool]:
    """(billing mode, minimum billed seconds, valid); defaults are EC2 Linux's."""
    billing, minimum, ok = "per-second", 60.0, True
    if "billing" in entries:
        text = get_choice(
            reporter, entries["billing"], path=join(path, "billing"), choices=BILLING_MODES
        )
        ok = text is not None
        billing = text or billing
    if "billing_minimum" in entries:
        seconds = get_duration(
            reporter, entries["billing_minimum"], path=join(path, "billing_minimum"),
            maximum=limits.MAX_BILLING_MINIMUM,
        )  # fmt: skip
        ok = ok and seconds is not None
        minimum = seconds if seconds is not None else minimum
    return billing, minimum, ok


def _present_keys(node: YNode) -> frozenset[str]:
    return frozenset(node.entries) if isinstance(node, YMap) else frozenset()


def _parse_endpoint(reporter: Reporter, node: YNode, *, path: str) -> str | None:
    text = get_str(reporter, node, path=path)
    if text is None:
        return None
    parts = urlsplit(text)
    # Not echoed: an endpoint may carry user:password@ by mistake.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        reporter.add(node.line, path, "must be an http:// or https:// URL with a host")
        return None
    if parts.username is not None or parts.password is not None:
        reporter.add(node.line, path, "must not embed credentials; use the credentials references")
        return None
    return text


def _parse_credentials(
    reporter: Reporter, node: YNode, *, path: str
) -> tuple[dict[str, SecretRef], bool] | None:
    """Return (references, all valid); None if `credentials` is not even a mapping."""
    if isinstance(node, YScalar) and node.value is not None and not is_rejected(node):
        reporter.add(node.line, path, f"must be a mapping of credential references; {SECRET_HINT}")
        return None
    creds = get_map(
        reporter,
        node,
        path=path,
        what="a mapping of credential references",
        allow_null=True,
        echo=False,
    )
    if creds is None:
        return None
    check_keys(reporter, creds, path=path, allowed=CREDENTIAL_NAMES)
    refs: dict[str, SecretRef] = {}
    complete = True
    for cred, ref_node in creds.entries.items():
        if cred not in CREDENTIAL_NAMES:
            complete = False
            continue
        ref = _parse_secret_ref(reporter, ref_node, path=join(path, cred))
        if ref is None:
            complete = False
        else:
            refs[cred] = ref
    return refs, complete


def _parse_secret_ref(reporter: Reporter, node: YNode, *, path: str) -> SecretRef | None:
    if is_rejected(node):
        return None
    if not isinstance(node, YMap):
        reporter.add(node.line, path, SECRET_HINT)
        return None
    check_keys(reporter, node, path=path, allowed=SECRET_SOURCES)
    sources = [s for s in SECRET_SOURCES if s in node.entries]
    if len(sources) != 1:
        reporter.add(node.line, path, "needs exactly one of env, file")
        return None
    source = sources[0]
    value_node = node.entries[source]
    if source == "env":
        name = get_str(
            reporter,
            value_node,
            path=join(path, "env"),
            pattern=ENV_VAR,
            pattern_hint="must be an environment variable name such as AWS_SECRET_ACCESS_KEY",
            echo=False,
        )
    else:
        name = get_str(reporter, value_node, path=join(path, "file"), echo=False)
        if name is not None and not _is_secret_file(name):
            reporter.add(
                value_node.line,
                join(path, "file"),
                "must be an absolute path, e.g. /etc/reconciler/credentials/aws_secret, or a "
                "systemd credential name without '/', e.g. aws_secret (read from "
                "$CREDENTIALS_DIRECTORY, see LoadCredential=)",
            )
            name = None
    if name is None or len(node.entries) != 1:
        return None
    return SecretRef(source=source, name=name)


def _is_secret_file(name: str) -> bool:
    """An absolute path, or a systemd credential name (a plain file name, read from
    $CREDENTIALS_DIRECTORY). Other relative paths would depend on the working directory."""
    if name.startswith("/"):
        return True
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name
