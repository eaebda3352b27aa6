"""GCE adapter: libcloud's Google Compute Engine driver behind the `ComputeProvider` port.

Owns: everything GCE-specific — zonal instance listing with `filter` and
`nextPageToken`, labels and names (`gce_labels`), `startup-script` user data, the
insert `requestId`, machine types and prices. Must not: decide what to create or
destroy, or let libcloud retry on its own.

libcloud's `GCENodeDriver` is used for its connection (JWT signing, token exchange,
bearer header, JSON errors mapped to exceptions; set up in `gce_connection`, which
keeps the token in memory and points auth and API at `endpoint`); its high-level
calls are not: they look up zones, networks, disk types and images before a create
(four or more requests) and `list_nodes` reads every page of the aggregated list
without a filter and ignores its warnings (a partial answer would read as a complete
one).

Fault model: throttling (HTTP 429, or 403 `rateLimitExceeded`) means the call was not
executed; a 5xx, a timeout, a reset connection or an unreadable body means its outcome
is unknown. An insert is safe to resend: the same operation always sends the same
`requestId` (GCE answers with the first insert's operation) and the same instance
name (a second instance of that name cannot exist: GCE says `alreadyExists`, and the
adapter then reads the existing one). A listing that cannot be read to the end, that
repeats a page token or that carries a warning (an unreachable zone) raises
ObservationIncomplete, never a partial answer. Nothing but our own error types leaves
a public method: libcloud's exceptions, and answers that cannot be read, are
translated in `_translate`.

Images: an image family is resolved here (once per family per adapter, so per pass)
and the concrete image is launched and recorded, so every instance of a generation
runs the image its first launch got. Cloud error text is repeated only with its
quoted values removed (`scrubbed_message`): GCE quotes what it refuses, and an insert
carries the startup-script.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from importlib.util import find_spec
from typing import Any, Final

import requests
import structlog
from libcloud.common.google import (
    GoogleAuthError,
    GoogleBaseError,
    JsonParseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from libcloud.common.types import LibcloudError, MalformedResponseError
from libcloud.compute.drivers.gce import API_VERSION
from libcloud.pricing import get_pricing

from reconciler.errors import (
    ConfigurationError,
    GceValueError,
    ObservationIncomplete,
    OutcomeUnknown,
    ProviderError,
    TokenRefused,
    TransientError,
)
from reconciler.model import InstanceState, ObservedInstance, ProviderProfile
from reconciler.providers.base import (
    TAG_OP,
    TAG_OWNER,
    LaunchRequest,
    LoadBalancerPort,
    VolumePort,
    among,
    launched_instance,
)
from reconciler.providers.calls import ProviderCalls
from reconciler.providers.credentials import resolve_secret
from reconciler.providers.gce.connection import (
    GceDriver,
    MemoryToken,
    endpoint_parts,
    new_token,
)
from reconciler.providers.gce.labels import (
    IMAGE_KEY,
    USER_DATA_KEY,
    family_image,
    gce_instance_name,
    image_reference,
    is_family,
    labels_for,
    metadata_problem,
    metadata_value,
    observed_from,
    owner_filter,
    request_id,
    scrubbed_message,
)

log = structlog.get_logger(__name__)

_PAGE_SIZE: Final = 500  # the largest page GCE list calls return
_MAX_PAGES: Final = 10_000  # a server that never stops paging is a fault, not a fleet
_RATE_REASONS: Final = ("rateLimitExceeded", "userRateLimitExceeded", "RESOURCE_EXHAUSTED")
_BENIGN_WARNINGS: Final = ("NO_RESULTS_ON_PAGE",)
# Shared-core E2 types bill a fraction of a vCPU (machineTypes reports 2 guest CPUs).
_SHARED_CORE_VCPUS: Final = {"e2-micro": 0.25, "e2-small": 0.5, "e2-medium": 1.0}


_OUR_ERRORS: Final = (TransientError, ProviderError, ObservationIncomplete, ConfigurationError)
_UNREADABLE: Final = (ValueError, KeyError, TypeError, AttributeError, IndexError)
_REASON = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _message(exc: GoogleBaseError) -> str:
    """The cloud's error as `<reason>: <message>`, the message without quoted values."""
    value = exc.value
    if isinstance(value, dict):
        value = value.get("message") or value.get("reason") or ""
    text = scrubbed_message(value) if isinstance(value, str) else ""
    reason = str(exc.code) if exc.code is not None else ""
    if not _REASON.fullmatch(reason):
        reason = f"HTTP {exc.http_code}"
    return f"{reason}: {text}" if text else reason


def _translate(exc: Exception, action: str) -> Exception:
    """Our error for any failure of a call (libcloud, requests, or reading the answer);
    messages carry no credentials, URLs, headers or bodies, and no quoted values."""
    if isinstance(exc, _OUR_ERRORS):
        return exc
    if isinstance(exc, GoogleAuthError):
        # libcloud could not load the private key (its message is not echoed).
        return ProviderError(f"{action}: credentials.secret is not a usable private key")
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(f"{action}: connection timed out")  # never sent
    if isinstance(exc, (requests.RequestException, OSError)):
        return OutcomeUnknown(f"{action}: connection failed ({type(exc).__name__})")
    if isinstance(exc, JsonParseError):
        return OutcomeUnknown(f"{action}: malformed response from the cloud")
    if isinstance(exc, GoogleBaseError):
        message = _message(exc)
        status = exc.http_code if isinstance(exc.http_code, int) else 0
        wait = getattr(exc, "retry_after", None)  # set by gce_connection._Response
        if status == 429 or exc.code in _RATE_REASONS:
            return TransientError(f"{action}: {message}", retry_after=wait)
        if status == 401:
            return TokenRefused(f"{action}: the access token was refused")
        if status >= 500:
            return OutcomeUnknown(f"{action}: {message}", retry_after=wait)
        # 200 with an error is a finished operation that failed: resending the same
        # requestId would only return it again.
        return ProviderError(f"{action}: {message}")
    if isinstance(exc, (LibcloudError, MalformedResponseError, *_UNREADABLE)):
        # libcloud's own parsing fails with these too (a 200 whose `error` is a string
        # raises AttributeError there); the call may have been carried out.
        return OutcomeUnknown(f"{action}: unreadable answer from the cloud ({type(exc).__name__})")
    # Not echoed: an unknown exception's text may hold anything the request held.
    return ProviderError(f"{action}: unexpected {type(exc).__name__} in the GCE client")


_EXISTS: Final = object()  # an operation that ended in RESOURCE_ALREADY_EXISTS


class GceProvider:
    """One GCE project and zone as a `ComputeProvider`."""

    # The longest wait between two looks at booting instances (GCE instances run within seconds).
    boot_poll_cap = 5.0

    def __init__(
        self,
        name: str,
        *,
        email: str,
        private_key: str,
        project: str,
        zone: str,
        endpoint: str | None = None,
        network: str = "default",
        subnetwork: str | None = None,
        external_ip: bool = True,
        user_data_key: str = USER_DATA_KEY,
        timeout: float = 30.0,
        retry_attempts: int = 5,
        retry_seconds: float = 60.0,
        page_size: int = _PAGE_SIZE,
        operation_wait: float = 60.0,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.project = project
        self.zone = zone
        self.region = zone.rsplit("-", 1)[0]  # us-central1-a -> us-central1
        self._network = network
        self._subnetwork = subnetwork
        self._external_ip = external_ip
        self._user_data_key = user_data_key
        self._calls = ProviderCalls(
            name,
            translate=self._translated,
            attempts=retry_attempts,
            seconds=retry_seconds,
            on_call=on_call,
        )
        self._page_size = page_size
        self._operation_wait = operation_wait
        options, prefix = endpoint_parts(endpoint)
        self._driver_options: dict[str, Any] = {"project": project, "timeout": timeout, **options}
        self._api_path = f"{prefix}/compute/{API_VERSION}/projects/{project}"
        self._token_path = prefix  # the token is POSTed to <prefix>/o/oauth2/token
        self._credentials = (email, private_key)  # used once per thread; never printed
        self._token: MemoryToken | None = None
        self._token_lock = threading.Lock()
        # libcloud keeps the last response on its connection object: one per thread.
        self._local = threading.local()
        self._machine_types: dict[str, Mapping[str, Any]] | None = None
        self._families: dict[str, str] = {}  # family -> its image, as first resolved here
        self._families_lock = threading.Lock()
        self._deleted: set[str] = set()  # deleted here; GCE lists them while STOPPING

    def __repr__(self) -> str:
        return f"GceProvider({self.name!r}, project={self.project!r}, zone={self.zone!r})"

    # ------------------------------------------------------------ libcloud plumbing

    def _shared_token(self) -> MemoryToken:
        with self._token_lock:
            if self._token is None:
                email, key = self._credentials
                self._token = new_token(
                    email,
                    key,
                    path=self._token_path,
                    options={k: v for k, v in self._driver_options.items() if k != "project"},
                    on_fetch=lambda: self._calls.count("oauth2.token"),
                )
            return self._token

    @property
    def _driver(self) -> Any:
        driver = getattr(self._local, "driver", None)
        if driver is None:
            email, key = self._credentials
            driver = self._local.driver = GceDriver(
                email,
                key,
                token=self._shared_token(),
                request_path=self._api_path,
                **self._driver_options,
            )
        return driver

    def _request(self, path: str, **kwargs: Any) -> Any:
        return self._driver.connection.request(path, **kwargs).object

    def _translated(self, exc: Exception, action: str) -> Exception:
        """`_translate`, and a refused token is dropped so the retry fetches a new one
        (called in the thread whose connection sent it)."""
        error = _translate(exc, action)
        if isinstance(error, TokenRefused) and self._token is not None:
            self._token.forget(self._driver.connection.token_serial)
        return error

    # ------------------------------------------------------------ observation

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        # The filter saves pages; ownership is still checked here, exactly.
        return [
            i for i in self._list_instances(self._filter(owner)) if i.tags.get(TAG_OWNER) == owner
        ]

    def look_up(self, owner: str, ids: Collection[str]) -> Sequence[ObservedInstance]:
        return among(self.list_owned(owner), ids)  # no listing by ids here: one listing

    def load_balancers(self) -> LoadBalancerPort | None:
        return None  # no load-balancer port for this cloud yet: validation refuses libcloud-lb

    def volumes(self) -> VolumePort | None:
        return None  # no volume hand-over for this cloud yet: validation refuses `volume:`

    def find_by_op(self, owner: str, op: str, *, retry: bool = True) -> ObservedInstance | None:
        found = [
            i
            for i in self._list_instances(self._filter(owner, op), retry=retry)
            if i.alive and i.tags.get(TAG_OWNER) == owner and i.tags.get(TAG_OP) == op
        ]
        return found[0] if found else None

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        """Every instance in this project and zone WITHOUT our owner label, all pages.
        For reports only; nothing here is ever modified."""
        return [i for i in self._list_instances(None) if i.tags.get(TAG_OWNER) != owner]

    def _filter(self, owner: str, op: str | None = None) -> str:
        try:
            return owner_filter(owner, op)
        except GceValueError as exc:
            raise ProviderError(f"{self.name}: owner cannot be a GCE label: {exc}") from None

    def _list_instances(self, filter_: str | None, *, retry: bool = True) -> list[ObservedInstance]:
        items = self._list(
            f"/zones/{self.zone}/instances",
            kind="compute#instanceList",
            action="instances.list",
            filter_=filter_,
            retry=retry,
        )
        try:
            observed = [observed_from(item, provider=self.name) for item in items]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            # One unreadable instance makes the whole listing untrustworthy.
            raise ObservationIncomplete(
                f"{self.name}: listing held an unreadable instance ({type(exc).__name__})"
            ) from None
        # Deleted here but still listed (STOPPING, or RUNNING for a moment): going away.
        return [
            replace(i, state=InstanceState.GONE) if i.id in self._deleted else i for i in observed
        ]

    def _list(
        self,
        path: str,
        *,
        kind: str,
        action: str,
        filter_: str | None = None,
        retry: bool = True,
    ) -> list[Mapping[str, Any]]:
        """Every item of a zonal list, all pages, or ObservationIncomplete."""
        base = {"maxResults": str(self._page_size)}
        if filter_:
            base["filter"] = filter_
        # Keyed by name: a server whose pages overlap must not make one item count twice.
        items: dict[str, Mapping[str, Any]] = {}
        token: str | None = None
        seen_tokens: set[str] = set()
        try:
            for _page in range(_MAX_PAGES):
                params = dict(base, pageToken=token) if token else base
                fetch = partial(self._page, path, params=params, kind=kind, action=action)
                page, token = self._calls.call(action, fetch, retry=retry)
                for item in page:
                    items[str(item["name"])] = item
                if not token:
                    return list(items.values())
                if token in seen_tokens:
                    raise ObservationIncomplete(f"{self.name}: {action} repeats a page token")
                seen_tokens.add(token)
        except (TransientError, ProviderError) as exc:
            raise ObservationIncomplete(f"{self.name}: {action} failed: {exc}") from None
        except ObservationIncomplete as exc:  # a partial page: say whose
            raise ObservationIncomplete(f"{self.name}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ObservationIncomplete(
                f"{self.name}: {action} answered unreadably ({type(exc).__name__})"
            ) from None
        raise ObservationIncomplete(f"{self.name}: {action} did not end after {_MAX_PAGES} pages")

    def _page(
        self, path: str, *, params: dict[str, str], kind: str, action: str
    ) -> tuple[list[Mapping[str, Any]], str | None]:
        body = self._request(path, params=params)
        token = body.get("nextPageToken") if isinstance(body, dict) else None
        return _page_items(body, kind=kind, action=action), token

    # ------------------------------------------------------------ mutation

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        owner = request.tags[TAG_OWNER]
        try:
            name = gce_instance_name(request.name, owner=owner, op=request.op)
            labels = labels_for(request.tags)
            image = image_reference(request.image, self.project)
        except GceValueError as exc:
            raise ProviderError(f"{self.name}: {exc}") from None
        metadata = {IMAGE_KEY: image}
        if request.user_data is not None:
            metadata[self._user_data_key] = request.user_data
        if is_family(image):
            image = metadata[IMAGE_KEY] = self._family_image(image)
        problem = metadata_problem(metadata)  # GCE's refusal would quote the script
        if problem:
            raise ProviderError(f"{self.name}: {problem}")
        body = self._instance_body(name, image=image, size=request.size, labels=labels,
                                   metadata=metadata)  # fmt: skip
        params = {"requestId": request_id(owner, request.op)}
        path = f"/zones/{self.zone}/instances"

        def insert() -> Mapping[str, Any] | None:
            try:
                answer = self._request(path, method="POST", params=params, data=body)
            except ResourceExistsError:
                return None  # the name holds the operation: an earlier attempt made it
            return _operation(answer, "instances.insert")

        operation = self._calls.call("instances.insert", insert)
        # "Already exists", at once or when the operation ends (a resent insert with the
        # same name), means an earlier attempt made it: adopt it if it is ours.
        if operation is None or self._await(operation, "instances.insert") is _EXISTS:
            existing = self._calls.call("instances.get", partial(self._get_instance, name))
            if existing is None or existing.tags.get(TAG_OP) != request.op:
                raise ProviderError(f"{self.name}: instance name {name} is taken by another")
            log.info("provider_launch_found_by_op", provider=self.name, op=request.op,
                     instance=name)  # fmt: skip
            return existing
        return launched_instance(
            request, provider=self.name, id=name, image=image, size=request.size
        )

    def _family_image(self, reference: str) -> str:
        """The image family `reference` points at now, asked once per adapter (per pass):
        launches of one generation within a pass get the same image even if the family
        moves meanwhile (later launches relaunch the image the generation recorded)."""
        with self._families_lock:
            if reference not in self._families:
                read = partial(self._read_family, reference)
                image = self._calls.call("images.getFromFamily", read)
                if image is None:
                    raise ProviderError(f"{self.name}: image family {reference} not found")
                log.info("provider_image_family_resolved", provider=self.name,
                         family=reference, image=image)  # fmt: skip
                self._families[reference] = image
            return self._families[reference]

    def _read_family(self, reference: str) -> str | None:
        try:
            answer = self._request(f"/{reference}")  # `/projects/...`: any project
        except ResourceNotFoundError:
            return None
        return family_image(reference, answer)

    def _instance_body(
        self,
        name: str,
        *,
        image: str,
        size: str,
        labels: Mapping[str, str],
        metadata: Mapping[str, str],
    ) -> dict[str, Any]:
        interface: dict[str, Any] = {"network": _resource(self._network, "global/networks")}
        if self._subnetwork:
            interface["subnetwork"] = _resource(
                self._subnetwork, f"regions/{self.region}/subnetworks"
            )
        if self._external_ip:
            interface["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
        return {
            "name": name,
            "machineType": f"zones/{self.zone}/machineTypes/{size}",
            "labels": dict(labels),
            "metadata": {"items": [{"key": k, "value": v} for k, v in metadata.items()]},
            "disks": [
                {
                    "boot": True,
                    "autoDelete": True,
                    "type": "PERSISTENT",
                    "initializeParams": {"sourceImage": image},
                }
            ],
            "networkInterfaces": [interface],
        }

    def _await(self, operation: Mapping[str, Any] | None, action: str) -> object:
        """Wait (bounded) for a zonal operation; a failed one raises ProviderError
        (libcloud raises it on reading an operation that holds an `error`), one that
        failed because its resource already exists returns `_EXISTS`."""
        deadline = time.monotonic() + self._operation_wait
        delay = 1.0
        while operation is not None and operation.get("status") != "DONE":
            name = operation.get("name")
            if not name or time.monotonic() + delay > deadline:
                log.info("provider_operation_pending", provider=self.name, action=action)
                return None  # the listing shows the instance; the waiter watches it boot
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            read = partial(self._read_operation, f"/zones/{self.zone}/operations/{name}")
            operation = self._calls.call("zoneOperations.get", read)
        return _EXISTS if operation is None else None

    def _read_operation(self, path: str) -> Mapping[str, Any] | None:
        """The operation, or None when it ended with RESOURCE_ALREADY_EXISTS."""
        try:
            return _operation(self._request(path), "zoneOperations.get")
        except ResourceExistsError:
            return None

    def _get_instance(self, name: str) -> ObservedInstance | None:
        try:
            resource = self._request(f"/zones/{self.zone}/instances/{name}")
        except ResourceNotFoundError:
            return None
        try:
            return observed_from(resource, provider=self.name)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise OutcomeUnknown(f"instances.get: {name} is unreadable") from None

    def destroy_instance(self, instance_id: str) -> None:
        path = f"/zones/{self.zone}/instances/{instance_id}"

        def delete() -> None:
            try:
                self._request(path, method="DELETE")
            except ResourceNotFoundError:
                return  # already gone: the goal of a destroy is met

        self._calls.call("instances.delete", delete)
        self._deleted.add(instance_id)

    def user_data_of(self, instance_id: str) -> str | None:
        """The `startup-script` an instance was launched with."""
        path = f"/zones/{self.zone}/instances/{instance_id}"

        def read() -> str | None:
            try:
                resource = self._request(path)
            except ResourceNotFoundError:
                return None
            return metadata_value(resource, self._user_data_key)

        return self._calls.call("instances.get", read)

    # ------------------------------------------------------------ sizes and prices

    def known_sizes(self) -> frozenset[str] | None:
        """The zone's machine types that can still be launched (one paginated list per
        adapter): an OBSOLETE or DELETED one is refused by GCE, so it is not offered."""
        return frozenset(
            name for name, item in self._zone_machine_types().items()
            if _deprecation(item)[0] not in ("OBSOLETE", "DELETED")
        )  # fmt: skip

    def size_warning(self, size: str) -> str | None:
        item = self._zone_machine_types().get(size)
        state, replacement = _deprecation(item or {})
        if state != "DEPRECATED":
            return None
        instead = f"; GCE suggests {replacement}" if replacement else ""
        return f"machine type {size} is DEPRECATED in {self.zone}{instead}"

    def _zone_machine_types(self) -> Mapping[str, Mapping[str, Any]]:
        if self._machine_types is None:
            items = self._list(
                f"/zones/{self.zone}/machineTypes",
                kind="compute#machineTypeList",
                action="machineTypes.list",
            )
            self._machine_types = {str(item["name"]): item for item in items}
        return self._machine_types

    def price_per_hour(self, size: str) -> float | None:
        """On-demand price from libcloud's `gce_instances` data: per-vCPU and per-GB
        prices of the machine family in this region, times the machine type's shape.
        None for families libcloud has no prices for (and for custom types)."""
        try:
            machine = self._zone_machine_types().get(size)
        except ObservationIncomplete as exc:
            # Asked after a launch too: a price must never fail what already happened.
            log.warning("provider_price_unknown", provider=self.name, size=size, error=str(exc))
            return None
        if machine is None:
            return None
        return machine_price(size, machine, region=self.region)


def machine_price(size: str, machine: Mapping[str, Any], *, region: str) -> float | None:
    family = size.split("-", 1)[0]
    prices = (get_pricing(driver_type="compute", driver_name="gce_instances") or {}).get(family)
    if not isinstance(prices, dict):
        return None
    try:
        vcpus = _SHARED_CORE_VCPUS.get(size, float(machine["guestCpus"]))
        total = vcpus * float(prices["cpu"]["on_demand"][region]["price"])
        if "ram" in prices:  # f1/g1: one price per instance, booked as "cpu"
            memory_gb = float(machine["memoryMb"]) / 1024
            total += memory_gb * float(prices["ram"]["on_demand"][region]["price"])
    except (KeyError, TypeError, ValueError):
        return None
    return round(total, 6)


def _operation(answer: Any, action: str) -> Mapping[str, Any]:
    """`answer` if it is an operation (libcloud raised already if it holds an error)."""
    if not isinstance(answer, dict) or answer.get("kind") != "compute#operation":
        raise OutcomeUnknown(f"{action}: the answer is not a compute#operation")
    return answer


def _deprecation(machine_type: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(state, the replacement's name) of a machine type's `deprecated` status."""
    deprecated = machine_type.get("deprecated")
    if not isinstance(deprecated, Mapping):
        return None, None
    replacement = deprecated.get("replacement")
    name = str(replacement).rsplit("/", 1)[-1] if replacement else None
    state = deprecated.get("state")
    return (str(state) if state else None), name


def _resource(value: str, collection: str) -> str:
    """A network or subnetwork setting as a resource path (names are in our project)."""
    return value if "/" in value else f"{collection}/{value}"


def _page_items(body: Any, *, kind: str, action: str) -> list[Mapping[str, Any]]:
    """A list page's items, or ObservationIncomplete if the page is not a whole answer."""
    if not isinstance(body, dict) or body.get("kind") != kind:
        # A 200 that is not this listing (a proxy's page, say) would read as "nothing
        # there" and make the planner replace the whole fleet.
        raise OutcomeUnknown(f"{action}: the response is not a {kind}")
    warning = body.get("warning")
    if warning and warning.get("code") not in _BENIGN_WARNINGS:
        raise ObservationIncomplete(
            f"{action}: the answer is partial ({warning.get('code')}: "
            f"{str(warning.get('message'))[:200]})"
        )
    if body.get("unreachables"):
        raise ObservationIncomplete(f"{action}: some locations were unreachable")
    items = body.get("items", [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ObservationIncomplete(f"{action}: the answer's items are unreadable")
    return items


def build(
    profile: ProviderProfile, *, on_call: Callable[[str, str], None] | None = None
) -> GceProvider:
    """The adapter for a `driver: gce` profile (`region:` is the zone)."""
    try:
        key_ref, secret_ref = profile.credentials["key"], profile.credentials["secret"]
    except KeyError as exc:
        raise ConfigurationError(
            f"provider {profile.name}: credentials.{exc.args[0]} is required for gce"
        ) from None
    if find_spec("cryptography") is None:
        # libcloud signs the service account's JWT with it (an optional dependency there).
        raise ConfigurationError(
            f"provider {profile.name}: driver gce needs the Python package 'cryptography'"
        )
    project = profile.options.get("project")
    if not project or not profile.region:
        raise ConfigurationError(f"provider {profile.name}: gce needs project and region (zone)")
    return GceProvider(
        profile.name,
        email=resolve_secret(key_ref),
        private_key=resolve_secret(secret_ref),
        project=project,
        zone=profile.region,
        endpoint=profile.endpoint,
        network=profile.options.get("network", "default"),
        subnetwork=profile.options.get("subnetwork"),
        external_ip=profile.options.get("external_ip", "true") == "true",
        user_data_key=profile.options.get("user_data_key", USER_DATA_KEY),
        timeout=profile.timeout,
        on_call=on_call,
    )
