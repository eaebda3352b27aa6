"""The desired-state schema as pydantic models: `reconciler.yaml` and `environments/<env>.yaml`.

Owns: which keys each mapping takes, which are required, what each value must be
(every leaf is checked by desired.schema, so the wording stays ours), and the rules
that tie the keys of one mapping together (exactly one health probe, one traffic
switch, one secret source).
Must not: read anything but referenced user data, know file names or lines (the
models are fed the YAML tree; desired.validation maps pydantic's error locations
back to file, line and key), or decide inheritance (desired.environment does).

The input is the `YNode` tree itself, not plain Python values: a leaf check then
sees what the operator wrote (`1.10`, not 1.1), and nothing is coerced on the way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from reconciler.desired import limits
from reconciler.desired.schema import (
    check_bool,
    check_choice,
    check_duration,
    check_int,
    check_number,
    check_str,
    describe,
    is_rejected,
)
from reconciler.desired.templates import command_problem, template_problem
from reconciler.desired.userdata import load_user_data
from reconciler.desired.yamlsource import YMap, YNode, YScalar, YSeq
from reconciler.errors import InvalidValue
from reconciler.model import (
    IDENTITY_NAME,
    HealthSpec,
    NotifierSpec,
    Policy,
    SecretRef,
    Strategy,
    TrafficSpec,
    VolumeSpec,
)
from reconciler.providers.drivers import DRIVERS

_T = TypeVar("_T")

# Error type of every problem raised here; desired.validation words the others
# (missing and unknown keys) itself.
INVALID: Final = "invalid"

PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
PROVIDER_NAME_HINT: Final = (
    "use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
)
IDENTITY_HINT: Final = (
    "use 1 to 31 lowercase letters, digits or '-', starting with a letter or digit"
)
ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECRET_HINT: Final = (
    "secrets must be references such as {env: VARNAME} or {file: /path}, never literal "
    "values (the value given is not shown)"
)
BILLING_MODES: Final = ("per-second", "per-hour")
DEFAULT_MAX_COUNT: Final = 100
MAX_NOTIFY_TIMEOUT: Final = 120.0  # a delivery never holds a pass longer than this
NOTIFIER_EVENTS: Final = (
    "generation-activated",
    "generation-ready",
    "generation-aborted",
    "generation-failed",
    "rollback",
    "guard-tripped",
    "invalid-commit",
    "run-failed",
    "service-down",
    "service-up",
    "leader-changed",
    "untrusted-commit",
)


@dataclass
class LoadContext:
    """What a leaf check needs from outside its own value, passed as pydantic's context."""

    root: Path
    user_data_cache: dict[str, str] = field(default_factory=dict)
    max_count: int | None = None  # None: unknown (policy invalid), counts are not checked
    providers: frozenset[str] | None = None  # declared in reconciler.yaml; None: unknown


def problem(exc: InvalidValue) -> PydanticCustomError:
    """Our worded problem as a pydantic error; `at` travels in its context."""
    return PydanticCustomError(INVALID, "{message}", {"message": exc.message, "at": exc.at})


def _node(value: object) -> YNode:
    if isinstance(value, YScalar | YMap | YSeq):
        return value
    raise problem(InvalidValue(f"unexpected value of type {type(value).__name__}"))


def _load_context(info: ValidationInfo) -> LoadContext:
    context = info.context
    if isinstance(context, LoadContext):
        return context
    raise TypeError("desired-state models are validated with a LoadContext")


def leaf(check: Callable[..., _T], **options: Any) -> PlainValidator:
    """A pydantic validator running one of desired.schema's checks on a YAML leaf."""

    def run(value: object) -> _T:
        try:
            return check(_node(value), **options)
        except InvalidValue as exc:
            raise problem(exc) from None

    return PlainValidator(run)


def _with_context(check: Callable[[YNode, LoadContext], _T]) -> PlainValidator:
    def run(value: object, info: ValidationInfo) -> _T:
        try:
            return check(_node(value), _load_context(info))
        except InvalidValue as exc:
            raise problem(exc) from None

    return PlainValidator(run)


def _entries(what: str, *, null_is_empty: bool = False) -> BeforeValidator:
    """Unwrap a YAML mapping of named entries (providers, services) for a `dict` field."""

    def run(value: object) -> object:
        node = _node(value)
        if isinstance(node, YMap):
            return dict(node.entries)
        if is_rejected(node):
            raise problem(InvalidValue(""))
        if null_is_empty and isinstance(node, YScalar) and node.value is None:
            return {}
        raise problem(InvalidValue(f"must be {what}, got {describe(node)}"))

    return BeforeValidator(run)


def _items(what: str) -> BeforeValidator:
    """Unwrap a YAML sequence for a `list` field."""

    def run(value: object) -> object:
        node = _node(value)
        if isinstance(node, YSeq):
            return list(node.items)
        if is_rejected(node):
            raise problem(InvalidValue(""))
        raise problem(InvalidValue(f"must be {what}"))

    return BeforeValidator(run)


def _name(pattern: re.Pattern[str], what: str, hint: str) -> PlainValidator:
    def run(value: object) -> str:
        name = str(value)
        if not pattern.fullmatch(name):
            raise problem(InvalidValue(f"invalid {what} name {name!r}: {hint}"))
        return name

    return PlainValidator(run)


def _merged(exc: ValidationError, extra: PydanticCustomError) -> ValidationError:
    """`exc`'s errors plus one more about the mapping itself, locations kept."""
    details: list[InitErrorDetails] = []
    for error in exc.errors():
        kind = error["type"]
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(INVALID, "{message}", error["ctx"])
                if kind == INVALID and "ctx" in error
                else kind,
                loc=error["loc"],
                input=error["input"],
            )
        )
    details.append(InitErrorDetails(type=extra, loc=(), input=None))
    return ValidationError.from_exception_data(exc.title, details)


class Document(BaseModel):
    """A YAML mapping with a fixed set of keys. Unknown keys are errors (with a "did you
    mean"), never ignored: a misspelt key silently ignored is a setting not applied.

    `ONE_OF` names keys of which exactly one must be written (a health check's probe
    kinds); that rule is judged on the keys as written and reported beside the other
    problems of the mapping, so a misspelt `htp:` gets both "unknown key" and "needs
    exactly one of http, tcp, command"."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    WHAT: ClassVar[str] = "a mapping"
    NULL_IS_EMPTY: ClassVar[bool] = False
    ECHO: ClassVar[bool] = True
    ONE_OF: ClassVar[tuple[str, ...]] = ()
    SAY_WHICH: ClassVar[bool] = True  # "; got http, tcp"

    @model_validator(mode="wrap")
    @classmethod
    def _mapping(cls, data: object, handler: ModelWrapValidatorHandler[Self]) -> Self:
        entries = cls._entries_of(data)
        rule = cls._one_of_problem(entries)
        if rule is None:
            return handler(entries)
        try:
            handler(entries)
        except ValidationError as exc:
            raise _merged(exc, rule) from None
        raise rule

    @classmethod
    def _entries_of(cls, data: object) -> dict[str, object]:
        if isinstance(data, dict):
            return data
        node = _node(data)
        if isinstance(node, YMap):
            return dict(node.entries)
        if is_rejected(node):
            raise problem(InvalidValue(""))
        if cls.NULL_IS_EMPTY and isinstance(node, YScalar) and node.value is None:
            return {}
        raise problem(InvalidValue(cls.not_a_mapping(node)))

    @classmethod
    def _one_of_problem(cls, entries: dict[str, object]) -> PydanticCustomError | None:
        if not cls.ONE_OF:
            return None
        found = [key for key in cls.ONE_OF if key in entries]
        if len(found) == 1:
            return None
        got = (f"; got {', '.join(found)}" if found else "; got none") if cls.SAY_WHICH else ""
        return problem(InvalidValue(f"needs exactly one of {', '.join(cls.ONE_OF)}{got}"))

    def chosen(self) -> str:
        """The one key of `ONE_OF` that was written."""
        return next(key for key in self.ONE_OF if self._value(key) is not None)

    def _value(self, key: str) -> object:
        name = next(n for n, info in type(self).model_fields.items() if (info.alias or n) == key)
        return getattr(self, name)

    @classmethod
    def not_a_mapping(cls, node: YNode) -> str:
        return f"must be {cls.WHAT}, got {describe(node, echo=cls.ECHO)}"


Text = Annotated[str | None, leaf(check_str)]
Flag = Annotated[bool, leaf(check_bool)]


# --- Health checks and traffic switches ---------------------------------------------


class HealthModel(Document):
    ONE_OF = ("http", "tcp", "command")

    http: Text = None
    tcp: Text = None
    command: Text = None
    timeout: Annotated[
        float | None, leaf(check_duration, positive=True, maximum=limits.MAX_HEALTH_TIMEOUT)
    ] = None
    interval: Annotated[
        float | None, leaf(check_duration, positive=True, maximum=limits.MAX_HEALTH_INTERVAL)
    ] = None
    warmup: Annotated[float | None, leaf(check_duration, maximum=limits.MAX_HEALTH_WARMUP)] = None
    healthy_after: Annotated[
        int | None, leaf(check_int, minimum=1, maximum=limits.MAX_HEALTHY_AFTER)
    ] = None

    @model_validator(mode="after")
    def _probe_target(self) -> HealthModel:
        kind = self.chosen()
        reason = _health_target_problem(kind, str(self._value(kind)))
        if reason is not None:
            raise problem(InvalidValue(reason, at=kind))
        return self

    def to_spec(self) -> HealthSpec:
        kind = self.chosen()
        spec = HealthSpec(kind=kind, target=str(self._value(kind)))
        return HealthSpec(
            kind=kind,
            target=spec.target,
            timeout=self.timeout if self.timeout is not None else spec.timeout,
            interval=self.interval if self.interval is not None else spec.interval,
            warmup=self.warmup if self.warmup is not None else spec.warmup,
            healthy_after=self.healthy_after or spec.healthy_after,
        )


def _health_target_problem(kind: str, target: str) -> str | None:
    """Why a health target cannot be probed, checked here so that no rollout launches
    instances only to fail on it: a template, and what its kind needs."""
    reason = template_problem(target)
    if reason is not None:
        return reason
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


SWITCH_HINT: Final = "use manual, or after DURATION (e.g. after 30m)"


@dataclass(frozen=True)
class SwitchWhen:
    """`switch:` read: manual, or a delay after the new generation is ready."""

    manual: bool
    after: float | None


def _switch(node: YNode) -> SwitchWhen:
    text = check_str(node)
    if text == "manual":
        return SwitchWhen(manual=True, after=None)
    words = text.split()
    if len(words) != 2 or words[0] != "after":
        raise InvalidValue(f"invalid value {text!r}: {SWITCH_HINT}")
    delay = YScalar(value=words[1], line=node.line, text=words[1])
    try:
        seconds = check_duration(delay, maximum=limits.MAX_SWITCH_DELAY)
    except InvalidValue as exc:
        raise InvalidValue(f"invalid delay in {text!r}: {exc.message}") from None
    return SwitchWhen(manual=False, after=seconds)


class TrafficModel(Document):
    ONE_OF = ("command", "libcloud-lb")

    command: Text = None
    libcloud_lb: Text = Field(default=None, alias="libcloud-lb")
    switch: Annotated[SwitchWhen | None, leaf(_switch)] = None

    @model_validator(mode="after")
    def _command_line(self) -> TrafficModel:
        reason = command_problem(self.command) if self.command is not None else None
        if reason is not None:
            raise problem(InvalidValue(reason, at="command"))
        return self

    def to_spec(self) -> TrafficSpec:
        manual = self.switch.manual if self.switch is not None else False
        after = self.switch.after if self.switch is not None else None
        if self.command is not None:
            return TrafficSpec("command", self.command, manual=manual, switch_after=after)
        assert self.libcloud_lb is not None
        return TrafficSpec("libcloud-lb", self.libcloud_lb, manual=manual, switch_after=after)


# --- Services ------------------------------------------------------------------------


def _count(node: YNode, context: LoadContext) -> int:
    count = check_int(node, minimum=0, maximum=limits.MAX_COUNT_HARD)
    if context.max_count is not None and count > context.max_count:
        raise InvalidValue(
            f"count {count} is above policy.max_count ({context.max_count}); raise "
            "policy.max_count in reconciler.yaml if this is intended"
        )
    return count


def _user_data(node: YNode, context: LoadContext) -> tuple[str, str]:
    return load_user_data(node, root=context.root, cache=context.user_data_cache)


def _strategy(node: YNode) -> Strategy:
    return Strategy(check_choice(node, choices=[s.value for s in Strategy]))


class ServiceSettings(Document):
    """The keys a service and `defaults:` share; a service's own value wins."""

    size: Text = None
    count: Annotated[int | None, _with_context(_count)] = None
    strategy: Annotated[Strategy | None, leaf(_strategy)] = None
    keep_previous: Annotated[
        float | None, leaf(check_duration, maximum=limits.MAX_KEEP_PREVIOUS)
    ] = None
    # (path relative to the root, contents)
    user_data: Annotated[tuple[str, str] | None, _with_context(_user_data)] = None
    health: HealthModel | None = None
    price_per_hour: Annotated[
        float | None, leaf(check_number, minimum=0, maximum=limits.MAX_PRICE_PER_HOUR)
    ] = None
    traffic: TrafficModel | None = None
    batch: Annotated[int | None, leaf(check_int, minimum=1, maximum=limits.MAX_BATCH)] = None


class Defaults(ServiceSettings):
    NULL_IS_EMPTY = True


DEVICE = re.compile(r"/dev/[a-z][a-z0-9]{1,15}")
VOLUME_TYPE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
SNAPSHOT_CHOICES: Final = ("before-handover", "never")


class VolumeModel(Document):
    WHAT = "a mapping with keys size, device (and optionally type, snapshot)"

    size: Annotated[int, leaf(check_int, minimum=1, maximum=limits.MAX_VOLUME_GIB)]
    device: Annotated[
        str, leaf(check_str, pattern=DEVICE, pattern_hint="a device path such as /dev/sdf")
    ]
    type: Annotated[
        str | None,
        leaf(check_str, pattern=VOLUME_TYPE, pattern_hint="a volume type such as gp3"),
    ] = None
    snapshot: Annotated[str, leaf(check_choice, choices=SNAPSHOT_CHOICES)] = "before-handover"

    def to_spec(self) -> VolumeSpec:
        return VolumeSpec(
            size=self.size, device=self.device, type=self.type,
            snapshot_before_handover=self.snapshot == "before-handover",
        )  # fmt: skip


class ServiceModel(ServiceSettings):
    WHAT = "a mapping with at least image"

    image: Annotated[str, leaf(check_str)]
    frozen: Flag = False
    volume: VolumeModel | None = None


def _declared_provider(node: YNode, context: LoadContext) -> str:
    name = check_str(node)
    known = context.providers
    if known is not None and name not in known:
        declared = ", ".join(sorted(known)) or "none"
        raise InvalidValue(
            f"unknown provider {name!r}; providers declared in reconciler.yaml: {declared}"
        )
    return name


ServiceName = Annotated[str, _name(IDENTITY_NAME, "service", IDENTITY_HINT)]


class EnvironmentFile(Document):
    """`environments/<env>.yaml`."""

    WHAT = "a mapping with keys provider, services at the top level"

    # Required as soon as there are services: desired.environment says so, as it
    # depends on another key.
    provider: Annotated[str | None, _with_context(_declared_provider)] = None
    services: Annotated[
        dict[ServiceName, ServiceModel] | None,
        _entries("a mapping of name -> service", null_is_empty=True),
    ] = None
    frozen: Flag = False


# --- reconciler.yaml -----------------------------------------------------------------


class PolicyModel(Document):
    NULL_IS_EMPTY = True

    max_parallel: Annotated[int, leaf(check_int, minimum=1, maximum=limits.MAX_PARALLEL)] = (
        Policy.max_parallel
    )
    max_destroy_fraction: Annotated[float, leaf(check_number, minimum=0, maximum=1)] = (
        Policy.max_destroy_fraction
    )
    boot_timeout: Annotated[
        float, leaf(check_duration, positive=True, maximum=limits.MAX_BOOT_TIMEOUT)
    ] = Policy.boot_timeout
    max_count: Annotated[int, leaf(check_int, minimum=1, maximum=limits.MAX_COUNT_POLICY)] = (
        DEFAULT_MAX_COUNT
    )
    thrash_limit: Annotated[int, leaf(check_int, minimum=1, maximum=limits.MAX_THRASH_LIMIT)] = (
        Policy.thrash_limit
    )
    thrash_window: Annotated[
        float, leaf(check_duration, positive=True, maximum=limits.MAX_THRASH_WINDOW)
    ] = Policy.thrash_window
    max_total_instances: Annotated[
        int, leaf(check_int, minimum=1, maximum=limits.MAX_TOTAL_INSTANCES)
    ] = Policy.max_total_instances

    def to_policy(self) -> Policy:
        return Policy(
            max_parallel=self.max_parallel,
            max_destroy_fraction=self.max_destroy_fraction,
            boot_timeout=self.boot_timeout,
            thrash_limit=self.thrash_limit,
            thrash_window=self.thrash_window,
            max_total_instances=self.max_total_instances,
        )


def _secret_file(node: YNode) -> str:
    name = check_str(node, echo=False)
    if not _is_secret_file(name):
        raise InvalidValue(
            "must be an absolute path, e.g. /etc/reconciler/credentials/aws_secret, or a "
            "systemd credential name without '/', e.g. aws_secret (read from "
            "$CREDENTIALS_DIRECTORY, see LoadCredential=)"
        )
    return name


def _is_secret_file(name: str) -> bool:
    """An absolute path, or a systemd credential name (a plain file name, read from
    $CREDENTIALS_DIRECTORY). Other relative paths would depend on the working directory."""
    if name.startswith("/"):
        return True
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


class SecretRefModel(Document):
    """A reference to a secret, never its value: `{env: NAME}` or `{file: /path}`."""

    ONE_OF = ("env", "file")
    SAY_WHICH = False
    ECHO = False

    env: Annotated[
        str | None,
        leaf(
            check_str,
            pattern=ENV_VAR,
            pattern_hint="must be an environment variable name such as AWS_SECRET_ACCESS_KEY",
            echo=False,
        ),
    ] = None
    file: Annotated[str | None, leaf(_secret_file)] = None

    @classmethod
    def not_a_mapping(cls, node: YNode) -> str:
        return SECRET_HINT

    def to_ref(self) -> SecretRef:
        if self.env is not None:
            return SecretRef(source="env", name=self.env)
        assert self.file is not None
        return SecretRef(source="file", name=self.file)


class CredentialsModel(Document):
    WHAT = "a mapping of credential references"
    NULL_IS_EMPTY = True
    ECHO = False

    key: SecretRefModel | None = None
    secret: SecretRefModel | None = None
    token: SecretRefModel | None = None

    @classmethod
    def not_a_mapping(cls, node: YNode) -> str:
        if isinstance(node, YScalar) and node.value is not None:
            return f"must be a mapping of credential references; {SECRET_HINT}"
        return super().not_a_mapping(node)

    def refs(self) -> dict[str, SecretRef]:
        found = {"key": self.key, "secret": self.secret, "token": self.token}
        return {name: ref.to_ref() for name, ref in found.items() if ref is not None}


def _driver(node: YNode) -> str:
    driver = check_str(node)
    if driver not in DRIVERS:
        raise InvalidValue(
            f"no adapter exists for driver {driver!r}; available drivers: {', '.join(DRIVERS)}"
        )
    return driver


def _endpoint(node: YNode) -> str:
    text = check_str(node)
    parts = urlsplit(text)
    # Not echoed: an endpoint may carry user:password@ by mistake.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue("must not embed credentials; use the credentials references")
    return text


class ProviderModel(Document):
    """A provider profile. Each driver's own settings (project, tenant, ...) are allowed
    beside these keys; desired.config checks them against the driver's table."""

    model_config = ConfigDict(extra="allow")
    WHAT = "a mapping with at least driver"
    COMMON_KEYS: ClassVar[tuple[str, ...]] = (
        "driver", "region", "endpoint", "credentials", "billing", "billing_minimum", "timeout",
    )  # fmt: skip

    driver: Annotated[str, leaf(_driver)]
    region: Text = None
    endpoint: Annotated[str | None, leaf(_endpoint)] = None
    credentials: CredentialsModel | None = None
    billing: Annotated[str, leaf(check_choice, choices=BILLING_MODES)] = "per-second"
    # Defaults are EC2 Linux's: per second, at least a minute.
    billing_minimum: Annotated[float, leaf(check_duration, maximum=limits.MAX_BILLING_MINIMUM)] = (
        60.0
    )
    timeout: Annotated[
        float | None, leaf(check_duration, positive=True, maximum=limits.MAX_PROVIDER_TIMEOUT)
    ] = None


def _events(node: YNode) -> str:
    return check_choice(node, choices=NOTIFIER_EVENTS)


def _webhook(node: YNode) -> str:
    url = check_str(node, echo=False)
    reason = webhook_problem(url)
    if reason is not None:
        raise InvalidValue(reason)
    return url


def _command(node: YNode) -> str:
    line = check_str(node, echo=False)
    reason = command_problem(line)
    if reason is not None:
        raise InvalidValue(reason)
    return line


class NotifierModel(Document):
    WHAT = "a mapping with webhook or command"
    ONE_OF = ("webhook", "command")
    SAY_WHICH = False

    webhook: Annotated[str | None, leaf(_webhook)] = None
    command: Annotated[str | None, leaf(_command)] = None
    secret: SecretRefModel | None = None
    events: Annotated[list[Annotated[str, leaf(_events)]], _items("a list of event kinds")] = Field(
        default_factory=list
    )
    timeout: Annotated[float, leaf(check_duration, positive=True, maximum=MAX_NOTIFY_TIMEOUT)] = (
        NotifierSpec.timeout
    )

    def to_spec(self) -> NotifierSpec:
        kind = "webhook" if self.webhook is not None else "command"
        target = self.webhook if self.webhook is not None else self.command
        assert target is not None
        return NotifierSpec(
            kind=kind,
            target=target,
            secret=self.secret.to_ref() if self.secret is not None else None,
            events=tuple(self.events),
            timeout=self.timeout,
        )


def webhook_problem(url: str) -> str | None:
    """Why `url` cannot be POSTed to, or None. Never quotes the URL: webhook URLs often
    carry their token in the path."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "must be an http(s) URL without spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        return "must be an http(s) URL with a valid host and port"
    if parts.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    if not parts.hostname:
        return "must be an http(s) URL with a host"
    if port == 0:
        return "must be an http(s) URL with a port from 1 to 65535"
    return None


def _at_least_one_provider(providers: dict[str, ProviderModel]) -> dict[str, ProviderModel]:
    if not providers:
        raise problem(InvalidValue("must declare at least one provider"))
    return providers


ProviderName = Annotated[str, _name(PROVIDER_NAME, "provider", PROVIDER_NAME_HINT)]


class ConfigFile(Document):
    """`reconciler.yaml`."""

    WHAT = "a mapping with keys owner, providers, defaults, policy, notifiers at the top level"

    owner: Annotated[
        str, leaf(check_str, pattern=PROVIDER_NAME, pattern_hint=f"owner: {PROVIDER_NAME_HINT}")
    ]
    providers: Annotated[
        dict[ProviderName, ProviderModel],
        _entries("a mapping of name -> profile"),
        AfterValidator(_at_least_one_provider),
    ]
    defaults: Defaults = Field(default_factory=Defaults)
    policy: PolicyModel = Field(default_factory=PolicyModel)
    notifiers: Annotated[list[NotifierModel], _items("a list of notifiers")] = Field(
        default_factory=list
    )
