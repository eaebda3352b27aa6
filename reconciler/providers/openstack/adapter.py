"""OpenStack adapter: libcloud's OpenStack driver (Nova v2.1) behind the `ComputeProvider` port.

Owns: everything OpenStack-specific — Keystone v3 password auth and the service
catalog (through libcloud), our tags as server metadata (Nova takes our key names
as they are, so no mapping), user data and config drive, image names resolved
through Glance and flavor names through Nova (reported back as names, the form the
desired state writes), our own paging of /servers/detail (see `_paginate`), state
mapping, lookup by the operation's metadata before re-sending a create, and bounded
retries (`calls`). Must not: decide what to create or destroy, or let libcloud retry
(a hidden retry of a create could launch twice: Nova has no client token). Nova's own
rules (statuses, metadata limits, next links) live in openstack_nova; libcloud's
connections, set up to report every request and never retry, in openstack_connection.

Fault model: 429, and 413 with Retry-After (Nova's historic rate limiter), mean the
call was not executed, and are retried after at least the hinted delay; a 5xx, a
timeout or a reset connection means its outcome is unknown, and a create with an
unknown outcome is looked up by its `reconciler:op` metadata before it is sent again.
A listing that cannot be read to the end (an error on a later page, a next link that
repeats, an item libcloud or we cannot parse) raises ObservationIncomplete, never a
partial answer. Whatever libcloud raises, or reading a cloud's answer raises, leaves
the public methods as one of our errors (`translate`, `_unreadable`), never as
libcloud's or Python's own exception.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import requests
import structlog
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.openstack import OpenStackNetwork

from reconciler.errors import (
    ConfigurationError,
    ObservationIncomplete,
    OutcomeUnknown,
    ProviderError,
    Throttled,
    TransientError,
)
from reconciler.model import ObservedInstance, ProviderProfile
from reconciler.providers.base import (
    TAG_NAME,
    TAG_OP,
    TAG_OWNER,
    LaunchRequest,
    LoadBalancerPort,
    VolumePort,
    among,
    instance_from_tags,
    launched_instance,
)
from reconciler.providers.calls import (
    ProviderCalls,
    launch_once,
    retry_after_seconds,
)
from reconciler.providers.credentials import resolve_secret
from reconciler.providers.openstack.connection import make_driver
from reconciler.providers.openstack.nova import (
    USER_DATA_MAX,
    is_uuid,
    metadata_problem,
    next_page,
    normalized_auth_url,
    nova_state,
)

log = structlog.get_logger(__name__)

_PAGE_SIZE = 1000  # Nova's default osapi_max_limit; a cloud may cap pages lower
_MAX_PAGES = 10_000  # a server that never stops paging is a fault, not a fleet


def translate(exc: Exception, action: str, *, region: str) -> Exception:
    """Our error for a libcloud/requests failure (any exception: nothing else leaves a
    call). Messages carry the cloud's status and fault text only: never URLs, headers,
    request bodies or libcloud's response dumps."""
    if isinstance(exc, TransientError | ProviderError | ObservationIncomplete | ConfigurationError):
        return exc
    if isinstance(exc, InvalidCredsError):
        return ProviderError(f"{action}: Keystone rejected the credentials")
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(f"{action}: connection timed out")  # never sent
    if isinstance(exc, requests.RequestException | OSError):
        return OutcomeUnknown(f"{action}: connection failed ({type(exc).__name__})")
    if isinstance(exc, BaseHTTPError):
        message = str(exc.message)[:300]
        retry_after = retry_after_seconds(exc.headers)
        if exc.code == 429 or (exc.code == 413 and retry_after is not None):
            return Throttled(f"{action}: {message}", retry_after=retry_after)
        if exc.code == 406 and "ListServers" in action:
            return ProviderError(
                f"{action}: this Nova does not offer compute microversion "
                f"{LISTING_MICROVERSION['OpenStack-API-Version'].split()[1]}, from which a "
                "listing reports servers of unreachable cells instead of leaving them out "
                "without a word; reconciler needs it to trust a listing"
            )
        if exc.code == 401:
            # libcloud dropped the token; the next attempt authenticates again.
            return TransientError(f"{action}: the token was refused")
        if exc.code >= 500:
            return OutcomeUnknown(f"{action}: {message}")
        return ProviderError(f"{action}: {message}")
    if isinstance(exc, LibcloudError | ValueError) and "endpoint" in str(exc):
        # libcloud's catalog lookup: no (or several) endpoints for the service and region.
        return ProviderError(
            f"{action}: the Keystone catalog has no single public endpoint for this "
            f"service in region {region!r}"
        )
    # Anything else came from reading an answer (libcloud's parsers raise whatever their
    # code hits: KeyError, StopIteration, ...) or from somewhere we do not know: the
    # request may have been executed. Not echoed: libcloud puts whole bodies in messages.
    return OutcomeUnknown(f"{action}: unreadable response from the cloud ({type(exc).__name__})")


# From 2.69 a listing shows a server of an unreachable cell (status UNKNOWN) instead
# of leaving it out in silence, which would read as "gone" and get it replaced.
LISTING_MICROVERSION: Mapping[str, str] = {
    "OpenStack-API-Version": "compute 2.69",
    "X-OpenStack-Nova-API-Version": "2.69",
}


def _unreadable(what: str, exc: Exception) -> str:
    """The message for an answer that could not be read: the exception's type only (its
    text may quote the answer)."""
    return f"{what}: unreadable answer from the cloud ({type(exc).__name__})"


# ---------------------------------------------------------------- the adapter


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment is not None else None


def build(
    profile: ProviderProfile, *, on_call: Callable[[str, str], None] | None = None
) -> OpenStackProvider:
    """The adapter for an `openstack` profile; credentials are resolved here, once."""
    try:
        user_ref, password_ref = profile.credentials["key"], profile.credentials["secret"]
    except KeyError as exc:
        raise ConfigurationError(
            f"provider {profile.name}: credentials.{exc.args[0]} is required for openstack"
        ) from None
    for setting in ("auth_url", "tenant"):
        if not profile.options.get(setting):
            raise ConfigurationError(
                f"provider {profile.name}: {setting} is required for openstack"
            )
    return OpenStackProvider(
        profile.name,
        user=resolve_secret(user_ref),
        password=resolve_secret(password_ref),
        auth_url=profile.options["auth_url"],
        tenant=profile.options["tenant"],
        domain=profile.options.get("domain", "Default"),
        project_domain_id=profile.options.get("project_domain_id", "default"),
        region=profile.region or "RegionOne",
        endpoint=profile.endpoint,
        network=profile.options.get("network"),
        config_drive=profile.options.get("config_drive") == "true",
        timeout=profile.timeout,
        on_call=on_call,
    )


class OpenStackProvider:
    """One OpenStack project in one region as a `ComputeProvider`."""

    # The longest wait between two looks at booting instances (Nova builds take seconds to minutes).
    boot_poll_cap = 5.0

    def __init__(
        self,
        name: str,
        *,
        user: str,
        password: str,
        auth_url: str,
        tenant: str,
        region: str = "RegionOne",
        domain: str = "Default",
        project_domain_id: str = "default",
        endpoint: str | None = None,
        network: str | None = None,
        config_drive: bool = False,
        timeout: float = 30.0,
        retry_attempts: int = 5,
        retry_seconds: float = 60.0,
        page_size: int = _PAGE_SIZE,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.region = region
        try:
            auth_url = normalized_auth_url(auth_url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"provider {name}: {exc}") from None
        self._network_ref = network
        self._config_drive = config_drive
        listener = partial(on_call, name) if on_call is not None else None
        # libcloud keeps the last response (and its auth state) on the connection, so
        # threads sharing a driver could read each other's answers: one per thread. A
        # closure, not a partial: a partial's repr would print the password.

        def new_driver() -> Any:
            return make_driver(
                user,
                password,
                auth_url=auth_url,
                tenant=tenant,
                domain=domain,
                project_domain_id=project_domain_id,
                region=region,
                endpoint=endpoint,
                timeout=timeout,
                listener=listener,
            )

        self._new_driver = new_driver
        self._local = threading.local()
        # No on_call here: the connections report every request, Keystone's included.
        self._calls = ProviderCalls(
            name,
            translate=lambda exc, action: translate(exc, action, region=region),
            attempts=retry_attempts,
            seconds=retry_seconds,
        )
        self._page_size = page_size
        self._lock = threading.Lock()
        self._flavors: dict[str, tuple[str, bool]] | None = None  # id -> (name, enabled)
        self._image_ids: dict[str, str] = {}  # image name -> id, for this adapter
        self._network_ids: list[str] | None = None

    @property
    def _driver(self) -> Any:
        driver = getattr(self._local, "driver", None)
        if driver is None:
            driver = self._local.driver = self._new_driver()
        return driver

    # ------------------------------------------------------------ requests

    def _get(
        self,
        path: str,
        params: dict[str, str],
        *,
        key: str,
        service: str = "compute",
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        connection = {
            "compute": self._driver.connection,
            "image": self._driver.image_connection,
            "network": self._driver.network_connection,
        }[service]
        body = connection.request(path, params=params, headers=dict(headers or {})).object
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            # A 200 that is not the listing (a proxy's page, say) would read as "none".
            raise OutcomeUnknown(f"GET {path}: the response is not an OpenStack listing")
        return body

    def _paginate(
        self,
        action: str,
        path: str,
        *,
        key: str,
        retry: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """Every item of a Nova collection, following `<key>_links` rel=next to the end.

        libcloud's own paging (list_nodes) follows next links too, but a link that
        repeats costs it 1,000 requests before it gives up, and nothing stops an item
        appearing on two pages; here a repeated marker ends the walk as incomplete and
        items are keyed by id. A failed page raises (after its retries): never a
        partial list."""
        items: dict[str, Any] = {}
        params = {"limit": str(self._page_size)}
        seen: set[str] = set()
        for _page in range(_MAX_PAGES):
            get = partial(self._get, path, params, key=key, headers=headers)
            body = self._calls.call(action, get, retry=retry)
            try:
                for item in body[key]:
                    items[str(item["id"])] = item
                following = next_page(body.get(f"{key}_links"))
            except Exception as exc:  # whatever reading a malformed page raises
                raise ObservationIncomplete(
                    f"{self.name}: listing held an unreadable item ({action}, {type(exc).__name__})"
                ) from None
            if following is None:
                return list(items.values())
            marker = following.get("marker")
            if not marker or marker in seen:
                raise ObservationIncomplete(f"{self.name}: listing repeats a page ({action})")
            seen.add(marker)
            params = following
        raise ObservationIncomplete(f"{self.name}: listing did not end after {_MAX_PAGES} pages")

    # ------------------------------------------------------------ flavors and images

    def _flavor_table(self) -> dict[str, tuple[str, bool]]:
        """Flavor id -> (name, enabled), read once per adapter (one request)."""
        with self._lock:
            if self._flavors is None:
                flavors = self._paginate("ListFlavors", "/flavors/detail", key="flavors")
                try:
                    self._flavors = {
                        str(f["id"]): (str(f["name"]), not f.get("OS-FLV-DISABLED:disabled"))
                        for f in flavors
                    }
                except Exception as exc:  # whatever reading a malformed flavor raises
                    raise ObservationIncomplete(
                        _unreadable(f"{self.name}: ListFlavors", exc)
                    ) from None
            return self._flavors

    def size_warning(self, size: str) -> str | None:
        return None  # this cloud's size listing says nothing of deprecation

    def known_sizes(self) -> frozenset[str] | None:
        """The flavor names this project may launch (disabled flavors are not offered)."""
        return frozenset(name for name, enabled in self._flavor_table().values() if enabled)

    def _flavor_id(self, size: str) -> str:
        for flavor_id, (name, enabled) in self._flavor_table().items():
            if name == size and enabled:
                return flavor_id
        raise ProviderError(f"{self.name}: no flavor named {size!r} in {self.region}")

    def price_per_hour(self, size: str) -> float | None:
        # libcloud carries no OpenStack prices; validation makes price_per_hour required.
        return None

    def resolve_image(self, image: str) -> str:
        """A Glance image id for `image`: ids (UUIDs) pass through; a name is looked up
        (the newest active image of that name wins) once per adapter."""
        if is_uuid(image):
            return image
        with self._lock:
            cached = self._image_ids.get(image)
        if cached is not None:
            return cached
        params = {"name": image, "status": "active"}
        body = self._calls.call(
            "ListImages", partial(self._get, "/v2/images", params, key="images", service="image")
        )
        try:
            found = [(str(i.get("created_at", "")), str(i["id"])) for i in body["images"]]
        except Exception as exc:  # whatever reading a malformed image raises
            raise ProviderError(_unreadable(f"{self.name}: ListImages", exc)) from None
        if not found:
            raise ProviderError(f"{self.name}: no active image named {image!r} in {self.region}")
        image_id = max(found)[1]
        with self._lock:
            self._image_ids[image] = image_id
        return image_id

    def _networks(self) -> list[Any]:
        """The profile's `network` (an id, or a name looked up in Neutron once)."""
        ref = self._network_ref
        if not ref:
            return []
        if self._network_ids is None:
            if is_uuid(ref):
                self._network_ids = [ref]
            else:
                params = {"name": ref}
                body = self._calls.call(
                    "ListNetworks",
                    partial(self._get, "/v2.0/networks", params, key="networks", service="network"),
                )
                try:
                    ids = [str(n["id"]) for n in body["networks"] if n.get("name") == ref]
                except Exception as exc:  # whatever reading a malformed network raises
                    raise ProviderError(_unreadable(f"{self.name}: ListNetworks", exc)) from None
                if len(ids) != 1:
                    raise ProviderError(
                        f"{self.name}: {len(ids)} networks are named {ref!r}; write its id"
                    )
                self._network_ids = ids
        return [OpenStackNetwork(i, ref, None, self._driver) for i in self._network_ids]

    # ------------------------------------------------------------ observation

    def _servers(self, *, retry: bool = True) -> list[ObservedInstance]:
        try:
            # Without flavor names every size would read as changed: no partial facts.
            flavors = self._flavor_table()
            servers = self._paginate(
                "ListServers", "/servers/detail", key="servers", retry=retry,
                headers=LISTING_MICROVERSION,
            )  # fmt: skip
        except (TransientError, ProviderError) as exc:
            raise ObservationIncomplete(f"{self.name}: listing failed: {exc}") from None
        unreachable = [s for s in servers if isinstance(s, dict) and s.get("status") == "UNKNOWN"]
        if unreachable:
            raise ObservationIncomplete(
                f"{self.name}: {len(unreachable)} server(s) are in cells Nova cannot reach "
                "(status UNKNOWN): the listing is incomplete"
            )
        try:
            return [self._to_observed(server, flavors) for server in servers]
        except Exception as exc:
            # libcloud's _to_node raises whatever its code hits on a server it cannot
            # read (a StopIteration without a self link, ...): one unread server and the
            # listing is partial.
            raise ObservationIncomplete(
                f"{self.name}: listing held an unreadable server ({type(exc).__name__})"
            ) from None

    def _to_observed(self, server: Any, flavors: dict[str, tuple[str, bool]]) -> ObservedInstance:
        node: Node = self._driver._to_node(server)
        tags = {str(k): v for k, v in (server.get("metadata") or {}).items() if isinstance(v, str)}
        flavor = server.get("flavor") or {}
        # Microversion 2.47+ embeds the flavor's name; older ones give its id only.
        flavor_id = str(flavor.get("id", ""))
        size = flavor.get("original_name") or flavors.get(flavor_id, (f"flavor:{flavor_id}",))[0]
        return instance_from_tags(
            tags if TAG_NAME in tags else {**tags, TAG_NAME: str(node.name)},
            id=str(node.id),
            provider=self.name,
            state=nova_state(str(server["status"]), server.get("OS-EXT-STS:task_state")),
            image=node.extra.get("imageId") or "",
            size=size,
            private_ip=next(iter(node.private_ips), None),
            public_ip=next(iter(node.public_ips), None),
            launched_at=_utc(node.created_at),
        )

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        # Nova cannot filter a listing by metadata: ownership is checked here, exactly.
        return [i for i in self._servers() if i.tags.get(TAG_OWNER) == owner]

    def look_up(self, owner: str, ids: Collection[str]) -> Sequence[ObservedInstance]:
        return among(self.list_owned(owner), ids)  # no listing by ids here: one listing

    def load_balancers(self) -> LoadBalancerPort | None:
        return None  # no load-balancer port for this cloud yet: validation refuses libcloud-lb

    def volumes(self) -> VolumePort | None:
        return None  # no volume hand-over for this cloud yet: validation refuses `volume:`

    def find_by_op(self, owner: str, op: str, *, retry: bool = True) -> ObservedInstance | None:
        found = [
            i
            for i in self._servers(retry=retry)
            if i.alive and i.tags.get(TAG_OWNER) == owner and i.tags.get(TAG_OP) == op
        ]
        return found[0] if found else None

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        """Every server in this project and region WITHOUT our owner tag: reports only."""
        return [i for i in self._servers() if i.tags.get(TAG_OWNER) != owner]

    # ------------------------------------------------------------ mutation

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        problem = metadata_problem(request.tags)
        if problem is not None:
            raise ProviderError(f"{self.name}: {problem}")
        user_data = request.user_data
        if user_data and len(base64.b64encode(user_data.encode())) > USER_DATA_MAX:
            raise ProviderError(
                f"{self.name}: user data is larger than Nova's {USER_DATA_MAX} bytes (base64)"
            )
        image_id = self.resolve_image(request.image)
        image = NodeImage(id=image_id, name=request.image, driver=self._driver)
        flavor = NodeSize(
            id=self._flavor_id(request.size),
            name=request.size,
            ram=0,
            disk=0,
            bandwidth=None,
            price=0.0,
            driver=self._driver,
        )
        networks = self._networks()
        owner = request.tags[TAG_OWNER]
        # libcloud's own body builder (tags as metadata, user data base64-encoded, config
        # drive, networks), sent as one POST. Not create_node: it follows the POST with
        # a GET, and a throttled GET would make a created server look never created.
        body = {
            "server": self._driver._create_args_to_params(
                None,
                name=request.name,
                image=image,
                size=flavor,
                ex_metadata=dict(request.tags),
                ex_userdata=user_data or None,
                ex_config_drive=True if self._config_drive else None,
                networks=networks,
            )
        }

        def create_server() -> str:
            answer = self._driver.connection.request("/servers", method="POST", data=body).object
            server = answer.get("server") if isinstance(answer, dict) else None
            server_id = server.get("id") if isinstance(server, dict) else None
            if not server_id:  # accepted, but which server? Not knowable from this answer
                raise OutcomeUnknown("CreateServer: the response names no server")
            return str(server_id)

        def launch() -> ObservedInstance:
            return launched_instance(
                request,
                provider=self.name,
                id=self._calls.attempt("CreateServer", create_server),
                image=image_id,
                size=request.size,  # the flavor's name, as the desired state writes it
            )

        return launch_once(
            launch,
            retrying=self._calls.retrying("CreateServer"),
            look_up=partial(self._look_up_launch, owner, request.op),
            # The last chance, with the listing's own retries.
            find=partial(self.find_by_op, owner, request.op),
        )

    def _look_up_launch(self, owner: str, op: str) -> ObservedInstance | None:
        """One unretried lookup by operation metadata; if it fails, the create must not
        be sent again, so the failure counts as one more unknown outcome."""
        try:
            found = self.find_by_op(owner, op, retry=False)
        except ObservationIncomplete as exc:
            raise OutcomeUnknown(
                f"CreateServer: cannot check for an earlier create: {exc}"
            ) from None
        if found is not None:
            log.info("provider_launch_found_by_op", provider=self.name, op=op, instance=found.id)
        return found

    def destroy_instance(self, instance_id: str) -> None:
        path = f"/servers/{quote(instance_id, safe='')}"

        def delete() -> None:
            try:
                self._driver.connection.request(path, method="DELETE")
            except BaseHTTPError as exc:
                if exc.code != 404:
                    raise  # 404: already gone, the goal of a destroy is met

        self._calls.call("DeleteServer", delete)

    def user_data_of(self, instance_id: str) -> str | None:
        """The user data a server was launched with. Nova shows it from microversion 2.3
        as an extended attribute, which the default policy grants to admins only."""
        path = f"/servers/{quote(instance_id, safe='')}"
        headers = {"OpenStack-API-Version": "compute 2.3", "X-OpenStack-Nova-API-Version": "2.3"}

        def show() -> Any:
            return self._driver.connection.request(path, headers=headers).object

        answer = self._calls.call("ShowServer", show)
        try:
            server = answer["server"]
            shown = "OS-EXT-SRV-ATTR:user_data" in server
            encoded = server.get("OS-EXT-SRV-ATTR:user_data")
            user_data = base64.b64decode(encoded, validate=True) if encoded else None
        except Exception as exc:  # whatever reading a malformed answer raises
            raise ProviderError(_unreadable(f"{self.name}: ShowServer", exc)) from None
        if not shown:
            raise ProviderError(
                f"{self.name}: the cloud does not show this user the servers' user data "
                "(Nova policy os_compute_api:os-extended-server-attributes)"
            )
        return user_data.decode("utf-8", "replace") if user_data is not None else None
