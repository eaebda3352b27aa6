"""EC2 adapter: libcloud's EC2 driver behind the `ComputeProvider` port.

Owns: everything EC2-specific — paginated DescribeInstances (libcloud's `list_nodes`
makes one call and ignores NextToken, so fleets past one page would go unseen),
state mapping, tags at launch, the ClientToken derived from the operation id, prices
from libcloud's pricing data, and translating libcloud/requests exceptions into ours
with bounded retries (`calls`). Must not: decide what to create or destroy, or let
libcloud retry on its own (a hidden retry of RunInstances could launch twice).

Fault model: throttling (EC2 sends `RequestLimitExceeded` as an XML error with HTTP
503, which libcloud does not map to its rate-limit exception) means the call was not
executed; a 5xx, a timeout, a reset connection or an unreadable body means its outcome
is unknown. A create with an unknown outcome is looked up by its `reconciler:op` tag
before it is sent again (EC2's ClientToken also protects it; EC2-compatible endpoints
may ignore the token). A listing that cannot be read to the end raises
ObservationIncomplete, never a partial answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import requests
import structlog
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.ec2 import (
    NAMESPACE,
    EC2Connection,
    EC2NodeDriver,
    EC2NodeLocation,
    ExEC2AvailabilityZone,
)
from libcloud.pricing import PRICING_DATA, get_pricing_file_path, get_size_price, set_pricing
from libcloud.utils.xml import findall, findattr, findtext

from reconciler.errors import ObservationIncomplete, OutcomeUnknown, ProviderError, TransientError
from reconciler.model import InstanceState, ObservedInstance
from reconciler.providers.base import (
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
from reconciler.providers.endpoints import parse_endpoint

log = structlog.get_logger(__name__)

# EC2's own instance states, mapped to what planning cares about.
_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPED,
    "stopped": InstanceState.STOPPED,
    "shutting-down": InstanceState.GONE,
    "terminated": InstanceState.GONE,
}
_PAGE_SIZE = 1000  # the largest page DescribeInstances allows with filters
_MAX_PAGES = 10_000  # a server that never stops paging is a fault, not a fleet
# Ids asked for in one DescribeInstances filter: EC2 limits the values of one filter
# (200, as others report), so half that; a boot wait for more lists the fleet instead.
_MAX_FILTER_IDS = 100
# Rejected before execution: retrying cannot duplicate anything.
_THROTTLE_CODES = ("RequestLimitExceeded", "Throttling", "RequestThrottled")
_TRANSIENT_CODES = (*_THROTTLE_CODES, "InternalError", "Unavailable", "ServiceUnavailable")
_GONE_CODES = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")
# EC2 is eventually consistent: an instance we launched may be unknown to other calls
# for a while. Within this window "not found" means "not visible yet", not "gone".
_NOT_VISIBLE_WINDOW = 120.0
_TERMINATING_STATES = ("shutting-down", "terminated")


class _EdgeRetriedConnection(EC2Connection):
    """libcloud's own retry (LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS) stays off: retries
    happen only in `ProviderCalls.call`, where each one is bounded and logged."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["retry_failed"] = False
        return super().request(*args, **kwargs)


class _Driver(EC2NodeDriver):
    connectionCls = _EdgeRetriedConnection


_PRICE_TABLE = "ec2_linux"
_price_table_lock = threading.Lock()


def _load_price_table() -> None:
    """Hand libcloud its EC2 price table without parsing the whole pricing file.

    libcloud's loader parses the entire file (4.5 MB, every provider: about 25 ms, a
    twentieth of a no-op pass) to keep one table of it. That table is one JSON object in
    the file: it is decoded from its offset alone and given to libcloud's own cache
    (`set_pricing`), so `get_size_price` answers from it as usual. A file laid out
    otherwise (the key not there exactly once, not a table of sizes) is left to
    libcloud's loader."""
    with _price_table_lock:
        if _PRICE_TABLE in PRICING_DATA["compute"]:
            return
        try:
            content = Path(get_pricing_file_path()).read_text(encoding="utf-8")
        except OSError:
            return  # libcloud's loader will say what is wrong with the file
        key = f'"{_PRICE_TABLE}"'
        at = content.find(key)
        if at < 0 or content.find(key, at + 1) >= 0:
            return
        start = content.find("{", at + len(key))
        if content[at + len(key) : start].strip() != ":":
            return
        try:
            table, _end = json.JSONDecoder().raw_decode(content, start)
        except ValueError:
            return
        if isinstance(table, dict) and all(isinstance(v, dict) for v in table.values()):
            set_pricing(driver_type="compute", driver_name=_PRICE_TABLE, pricing=table)


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def translate_ec2_error(exc: Exception, action: str) -> Exception:
    """Our error for a libcloud/requests failure; messages carry no credentials (nor
    request URLs, headers or bodies: only the cloud's error code and message)."""
    if isinstance(exc, TransientError | ProviderError):
        return exc
    if isinstance(exc, InvalidCredsError):
        return ProviderError(f"{action}: the cloud rejected the credentials")
    if isinstance(exc, requests.ConnectTimeout):
        # No connection was made, so the request was never sent.
        return TransientError(f"{action}: connection timed out")
    if isinstance(exc, (requests.RequestException, OSError)):
        return OutcomeUnknown(f"{action}: connection failed ({type(exc).__name__})")
    if isinstance(exc, BaseHTTPError):
        message = str(exc.message)[:300]
        wait = retry_after_seconds(exc.headers)  # a 429's or 503's Retry-After
        if exc.code == 429 or any(code in message for code in _THROTTLE_CODES):
            return TransientError(f"{action}: {message}", retry_after=wait)
        if exc.code >= 500 or any(code in message for code in _TRANSIENT_CODES):
            return OutcomeUnknown(f"{action}: {message}", retry_after=wait)
        return ProviderError(f"{action}: {message}")
    if isinstance(exc, (LibcloudError, MalformedResponseError)):
        # Not echoed: libcloud puts the whole response body in the message.
        return OutcomeUnknown(f"{action}: malformed response from the cloud")
    return exc


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_Listed = TypeVar("_Listed", bound=_HasId)  # what a listing's items are read as


def _root_is(body: Any, response: str) -> bool:
    """True if `body` is the EC2 document `response` (not a proxy's page, not an error)."""
    tag = getattr(body, "tag", "")
    return isinstance(tag, str) and tag.rsplit("}", 1)[-1] == response


class Ec2Provider:
    """One EC2 region (or EC2-compatible endpoint) as a `ComputeProvider`."""

    # The longest wait between two looks at booting instances (EC2 instances run
    # within seconds to a minute).
    boot_poll_cap = 5.0

    def __init__(
        self,
        name: str,
        *,
        key: str,
        secret: str,
        region: str,
        endpoint: str | None = None,
        timeout: float = 30.0,
        retry_attempts: int = 5,
        retry_seconds: float = 60.0,
        page_size: int = _PAGE_SIZE,
        on_call: Callable[[str, str], None] | None = None,
        agent: str | None = None,
    ) -> None:
        self.name = name
        # Appended to the User-Agent of every request (a leader's epoch): the cloud's
        # audit log (CloudTrail's userAgent) then shows which leader sent each call.
        self._agent = agent
        self.region = region
        options: dict[str, Any] = {"region": region, "signature_version": "4", "timeout": timeout}
        if endpoint:
            host, port, secure = parse_endpoint(endpoint)
            options.update(host=host, port=port, secure=secure)
        # libcloud keeps the last HTTP response on its connection object, so two threads
        # sharing a driver can read each other's answers: one driver per thread.
        self._driver_args = (key, secret, options)
        self._local = threading.local()
        self._calls = ProviderCalls(
            name,
            translate=translate_ec2_error,
            attempts=retry_attempts,
            seconds=retry_seconds,
            on_call=on_call,
        )
        self._page_size = page_size
        self._sizes: frozenset[str] | None = None
        self._image_ids: dict[str, str] = {}  # image name -> AMI id, for this adapter
        self._launched: dict[str, float] = {}  # instance id -> monotonic launch time

    @property
    def _driver(self) -> Any:
        driver = getattr(self._local, "driver", None)
        if driver is None:
            key, secret, options = self._driver_args
            driver = self._local.driver = _Driver(key, secret, **options)
            if self._agent:
                driver.connection.user_agent_append(self._agent)
        return driver

    # ------------------------------------------------------------ requests

    def _request(self, params: dict[str, str]) -> Any:
        return self._driver.connection.request(self._driver.path, params=params).object

    # ------------------------------------------------------------ observation

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        # The server-side filter is a convenience, not the guard: EC2 filter values
        # take wildcards and compatible endpoints filter loosely, so ownership is
        # checked again here, exactly.
        return [
            i for i in self._describe({"tag:" + TAG_OWNER: owner}) if i.tags.get(TAG_OWNER) == owner
        ]

    def look_up(self, owner: str, ids: Collection[str]) -> Sequence[ObservedInstance]:
        # One request for the new instances alone (the server renders a few, not the
        # fleet); an id the API does not show yet is simply absent from a filter's
        # answer, where asking by InstanceId.N would fail the whole call.
        wanted = set(ids)
        if not wanted:
            return []
        if len(wanted) > _MAX_FILTER_IDS:
            return among(self.list_owned(owner), wanted)
        found = self._describe({"instance-id": sorted(wanted)})
        return [i for i in among(found, wanted) if i.tags.get(TAG_OWNER) == owner]

    def find_by_op(self, owner: str, op: str, *, retry: bool = True) -> ObservedInstance | None:
        filters = {"tag:" + TAG_OWNER: owner, "tag:" + TAG_OP: op}
        found = [
            i
            for i in self._describe(filters, retry=retry)
            if i.alive and i.tags.get(TAG_OWNER) == owner and i.tags.get(TAG_OP) == op
        ]
        return found[0] if found else None

    def _describe(
        self, filters: Mapping[str, str | Sequence[str]], *, retry: bool = True
    ) -> list[ObservedInstance]:
        return self.listing(
            "DescribeInstances", filters, "reservationSet/item/instancesSet/item",
            self._to_observed, page_size=self._page_size, what="listing", item="instance",
            retry=retry,
        )  # fmt: skip

    def listing(
        self,
        action: str,
        filters: Mapping[str, str | Sequence[str]],
        items: str,
        read: Callable[[Any], _Listed],
        *,
        page_size: int,
        what: str,
        item: str,
        retry: bool = True,
    ) -> list[_Listed]:
        """Every page of a Describe call: `items` is where one item sits in a page,
        `read` makes it ours. The whole listing fails (ObservationIncomplete, `what`
        and `item` name it) on a failed page, a page that is not the call's answer, an
        unreadable item, a repeated page token or no last page: a partial listing
        would read as instances or volumes gone. Shared by instances and volumes."""
        base = {"Action": action, "MaxResults": str(page_size)}
        for n, (name, values) in enumerate(sorted(filters.items()), start=1):
            base[f"Filter.{n}.Name"] = name
            for k, value in enumerate([values] if isinstance(values, str) else values, start=1):
                base[f"Filter.{n}.Value.{k}"] = value
        # Keyed by id: a server whose pages overlap must not make one item count twice.
        found: dict[str, _Listed] = {}
        token: str | None = None
        seen_tokens: set[str] = set()
        try:
            for _page in range(_MAX_PAGES):
                params = dict(base, NextToken=token) if token else base
                body = self._calls.call(action, partial(self._page, params), retry=retry)
                for element in findall(body, items, NAMESPACE):
                    listed = read(element)
                    found[listed.id] = listed
                token = findtext(body, "nextToken", NAMESPACE)
                if not token:
                    return list(found.values())
                if token in seen_tokens:
                    raise ObservationIncomplete(f"{self.name}: {what} repeats a page token")
                seen_tokens.add(token)
        except (TransientError, ProviderError) as exc:
            raise ObservationIncomplete(f"{self.name}: {what} failed: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # One unreadable item makes the whole listing untrustworthy.
            raise ObservationIncomplete(
                f"{self.name}: {what} held an unreadable {item} ({type(exc).__name__})"
            ) from None
        raise ObservationIncomplete(f"{self.name}: {what} did not end after {_MAX_PAGES} pages")

    def _page(self, params: dict[str, str]) -> Any:
        body = self._request(params)
        if not _root_is(body, f"{params['Action']}Response"):
            # A 200 that is not a listing (a proxy's page, say) would read as "no
            # instances" and make the planner replace the whole fleet.
            raise OutcomeUnknown(f"{params['Action']}: the response is not an EC2 listing")
        return body

    def _to_observed(self, item: Any) -> ObservedInstance:
        # The few fields planning reads, with libcloud's XML helpers. Its `_to_node` also
        # parses block devices, interfaces, groups and product codes, which nothing here
        # reads and which were most of a listing's parse time.
        def text(path: str) -> str | None:
            return findtext(item, path, NAMESPACE) or None

        instance_id = text("instanceId")
        if instance_id is None:
            raise ValueError("an instance without an id")
        tags: dict[str, str] = dict(self._driver._get_resource_tags(item))
        launched = text("launchTime")
        raw_state = findattr(item, "instanceState/name", NAMESPACE) or ""
        return instance_from_tags(
            tags,
            id=instance_id,
            provider=self.name,
            state=_STATES.get(raw_state, InstanceState.PENDING),
            image=text("imageId") or "",
            size=text("instanceType") or "",
            private_ip=text("privateIpAddress"),
            public_ip=text("ipAddress"),
            launched_at=datetime.fromisoformat(launched) if launched else None,
            zone=text("placement/availabilityZone"),
        )

    # ------------------------------------------------------------ mutation

    def resolve_image(self, image: str) -> str:
        """An AMI id for `image`: ids pass through; a name is looked up (newest image of
        that name wins) once per adapter, so a pass does not repeat the call."""
        if image.startswith("ami-"):
            return image
        cached = self._image_ids.get(image)
        if cached is not None:
            return cached
        params = {"Action": "DescribeImages", "Filter.1.Name": "name", "Filter.1.Value.1": image}
        body = self._calls.call("DescribeImages", partial(self._request, params))
        found = [
            (findtext(item, "creationDate", NAMESPACE) or "", findtext(item, "imageId", NAMESPACE))
            for item in findall(body, "imagesSet/item", NAMESPACE)
        ]
        if not found:
            raise ProviderError(f"{self.name}: no image named {image!r} in {self.region}")
        image_id = str(max(found)[1])
        self._image_ids[image] = image_id
        return image_id

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        image_id = self.resolve_image(request.image)
        image = NodeImage(id=image_id, name=request.image, driver=self._driver)
        size = NodeSize(
            id=request.size,
            name=request.size,
            ram=0,
            disk=0,
            bandwidth=None,
            price=0.0,
            driver=self._driver,
        )
        owner = request.tags[TAG_OWNER]
        location = None
        if request.zone:
            zone = ExEC2AvailabilityZone(request.zone, "available", self.region)
            location = EC2NodeLocation(request.zone, request.zone, "", self._driver, zone)

        def run_instances() -> Node:
            node: Any = self._driver.create_node(
                name=request.name,
                image=image,
                size=size,
                location=location,
                ex_metadata=dict(request.tags),  # tags ride on RunInstances itself
                ex_userdata=request.user_data,
                # Same operation, same token: EC2 returns the first instance on a retry.
                ex_clienttoken=f"reconciler-{request.op}",
            )
            if not isinstance(node, Node):  # zero or several instances: not our launch
                raise OutcomeUnknown("RunInstances: the response holds no single instance")
            return node

        def launch() -> ObservedInstance:
            node = self._calls.attempt("RunInstances", run_instances)
            self._launched[str(node.id)] = time.monotonic()
            return launched_instance(
                request,
                provider=self.name,
                id=str(node.id),
                image=node.extra.get("image_id") or request.image,
                size=node.extra.get("instance_type") or request.size,
                private_ip=_first(node.private_ips),
                public_ip=_first(node.public_ips),
                zone=node.extra.get("availability") or request.zone,
            )

        return launch_once(
            launch,
            retrying=self._calls.retrying("RunInstances"),
            look_up=partial(self._look_up_launch, owner, request.op),
            # The last chance, with the listing's own retries.
            find=partial(self.find_by_op, owner, request.op),
        )

    def _look_up_launch(self, owner: str, op: str) -> ObservedInstance | None:
        """One unretried lookup by operation tag; if it fails, the launch must not be
        sent again, so the failure counts as one more unknown outcome."""
        try:
            found = self.find_by_op(owner, op, retry=False)
        except ObservationIncomplete as exc:
            raise OutcomeUnknown(
                f"RunInstances: cannot check for an earlier launch: {exc}"
            ) from None
        if found is not None:
            self._launched.setdefault(found.id, time.monotonic())
            log.info("provider_launch_found_by_op", provider=self.name, op=op, instance=found.id)
        return found

    def destroy_instance(self, instance_id: str) -> None:
        params = {"Action": "TerminateInstances", "InstanceId.1": instance_id}

        def terminate() -> None:
            try:
                body = self._request(params)
            except BaseHTTPError as exc:
                if not any(code in str(exc.message) for code in _GONE_CODES):
                    raise
                launched = self._launched.get(instance_id)
                if launched is not None and time.monotonic() - launched < _NOT_VISIBLE_WINDOW:
                    raise TransientError(
                        f"TerminateInstances: {instance_id} is not visible yet"
                    ) from None
                return  # already gone: the goal of a destroy is met
            states = [
                findtext(item, "currentState/name", NAMESPACE)
                for item in findall(body, "instancesSet/item", NAMESPACE)
            ]
            if not _root_is(body, "TerminateInstancesResponse") or not states:
                raise OutcomeUnknown("TerminateInstances: the response is not an EC2 answer")
            if not all(state in _TERMINATING_STATES for state in states):
                raise TransientError(f"TerminateInstances: {instance_id} is still {states[0]}")

        self._calls.call("TerminateInstances", terminate)
        self._launched.pop(instance_id, None)

    def user_data_of(self, instance_id: str) -> str | None:
        """The user data an instance was launched with (to relaunch its like in a rollback)."""
        params = {"Action": "DescribeInstanceAttribute", "InstanceId": instance_id,
                  "Attribute": "userData"}  # fmt: skip
        body = self._calls.call("DescribeInstanceAttribute", partial(self._request, params))
        encoded = findtext(body, "userData/value", NAMESPACE)
        return base64.b64decode(encoded).decode("utf-8", "replace") if encoded else None

    # Set by the registry when the profile can reach a load-balancer API (classic ELB).
    lb_factory: Callable[[], LoadBalancerPort] | None = None

    def load_balancers(self) -> LoadBalancerPort | None:
        return self.lb_factory() if self.lb_factory is not None else None

    def volumes(self) -> VolumePort | None:
        from reconciler.providers.ec2.volumes import Ec2Volumes

        return Ec2Volumes(self)

    def size_warning(self, size: str) -> str | None:
        return None  # this cloud's size listing says nothing of deprecation

    def known_sizes(self) -> frozenset[str] | None:
        # libcloud's EC2 size table is bundled data: no request is made. Its region table
        # is read directly: `list_sizes` prices each of the ~800 sizes on the way (40 ms).
        if self._sizes is None:
            from libcloud.compute.constants.ec2_region_details_complete import REGION_DETAILS

            region = REGION_DETAILS.get(self.region)
            self._sizes = (
                frozenset(region["instance_types"]) if region is not None
                else frozenset(size.id for size in self._driver.list_sizes())
            )  # fmt: skip
        return self._sizes

    def price_per_hour(self, size: str) -> float | None:
        _load_price_table()
        try:
            price = get_size_price(
                driver_type="compute", driver_name=_PRICE_TABLE, size_id=size, region=self.region
            )
        except (KeyError, LibcloudError):
            return None
        return float(price) if price is not None else None

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        """Every instance in this account and region WITHOUT our owner tag, all pages.

        For reports only (`ledger orphans --include-unowned`): nothing here is ever
        modified. EC2 filters cannot say "tag absent", so the listing is unfiltered and
        the owned ones are dropped here.
        """
        return [i for i in self._describe({}) if i.tags.get(TAG_OWNER) != owner]
