"""EC2 adapter: libcloud's EC2 driver behind the `ComputeProvider` port.

Owns: everything EC2-specific — paginated DescribeInstances (libcloud's `list_nodes`
makes one call and ignores NextToken, so fleets past one page would go unseen),
state mapping, tags at launch, the ClientToken derived from the operation id, prices
from libcloud's pricing data, and translating libcloud/requests exceptions into ours
with bounded retries (tenacity). Must not: decide what to create or destroy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
import structlog
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NodeDriver
from libcloud.compute.types import NodeState
from libcloud.pricing import get_size_price
from libcloud.utils.xml import findall, findattr, findtext
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from reconciler.errors import ObservationIncomplete, ProviderError, TransientError
from reconciler.model import InstanceState, ObservedInstance
from reconciler.providers.base import (
    TAG_ENV,
    TAG_OP,
    TAG_OWNER,
    TAG_SERVICE,
    TAG_SPEC,
    LaunchRequest,
    generation_from_tags,
    slot_from_name,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

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
_TRANSIENT_CODES = ("RequestLimitExceeded", "Throttling", "InternalError", "Unavailable")
_GONE_CODES = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


def parse_endpoint(endpoint: str) -> tuple[str, int, bool]:
    url = urlparse(endpoint)
    secure = url.scheme == "https"
    port = url.port or (443 if secure else 80)
    return url.hostname or "127.0.0.1", port, secure


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def _translate(exc: Exception, action: str) -> Exception:
    """Our error for a libcloud/requests failure; messages carry no credentials."""
    if isinstance(exc, InvalidCredsError):
        return ProviderError(f"{action}: the cloud rejected the credentials")
    if isinstance(exc, (requests.RequestException, OSError)):
        return TransientError(f"{action}: connection failed ({type(exc).__name__})")
    if isinstance(exc, BaseHTTPError):
        message = str(exc.message)[:300]
        if exc.code >= 500 or exc.code == 429 or any(c in message for c in _TRANSIENT_CODES):
            return TransientError(f"{action}: {message}")
        return ProviderError(f"{action}: {message}")
    if isinstance(exc, (LibcloudError, MalformedResponseError)):
        return TransientError(f"{action}: malformed response from the cloud")
    return exc


class Ec2Provider:
    """One EC2 region (or EC2-compatible endpoint) as a `ComputeProvider`."""

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
    ) -> None:
        self.name = name
        self.region = region
        options: dict[str, Any] = {"region": region, "signature_version": "4", "timeout": timeout}
        if endpoint:
            host, port, secure = parse_endpoint(endpoint)
            options.update(host=host, port=port, secure=secure)
        self._driver: Any = EC2NodeDriver(key, secret, **options)
        self._retry_attempts = retry_attempts
        self._retry_seconds = retry_seconds
        self._page_size = page_size
        self._on_call = on_call  # (provider, action) per request sent: metrics

    # ------------------------------------------------------------ calls with retries

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one API call; retry transient failures with jittered backoff."""
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self._retry_attempts) | stop_after_delay(self._retry_seconds),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            before_sleep=lambda state: log.warning(
                "provider_call_retry",
                provider=self.name,
                action=action,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if self._on_call is not None:
                    self._on_call(self.name, action)
                try:
                    return fn()
                except Exception as exc:  # translated at this edge, re-raised typed
                    raise _translate(exc, action) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, params: dict[str, str]) -> Any:
        return self._driver.connection.request(self._driver.path, params=params).object

    # ------------------------------------------------------------ observation

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        return self._describe({"tag:" + TAG_OWNER: owner})

    def find_by_op(self, owner: str, op: str) -> ObservedInstance | None:
        found = [
            i for i in self._describe({"tag:" + TAG_OWNER: owner, "tag:" + TAG_OP: op}) if i.alive
        ]
        return found[0] if found else None

    def _describe(self, filters: dict[str, str]) -> list[ObservedInstance]:
        base = {"Action": "DescribeInstances", "MaxResults": str(self._page_size)}
        for n, (name, value) in enumerate(sorted(filters.items()), start=1):
            base[f"Filter.{n}.Name"] = name
            base[f"Filter.{n}.Value.1"] = value
        instances: list[ObservedInstance] = []
        token: str | None = None
        try:
            for _page in range(_MAX_PAGES):
                params = dict(base, NextToken=token) if token else base
                body = self._call("DescribeInstances", partial(self._request, params))
                for item in findall(body, "reservationSet/item/instancesSet/item", NAMESPACE):
                    instances.append(self._to_observed(item))
                token = findtext(body, "nextToken", NAMESPACE)
                if not token:
                    return instances
        except (TransientError, ProviderError) as exc:
            raise ObservationIncomplete(f"{self.name}: listing failed: {exc}") from None
        raise ObservationIncomplete(f"{self.name}: listing did not end after {_MAX_PAGES} pages")

    def _to_observed(self, item: Any) -> ObservedInstance:
        node: Node = self._driver._to_node(item)
        raw_state = findattr(item, "instanceState/name", NAMESPACE) or ""
        tags: dict[str, str] = dict(node.extra.get("tags") or {})
        launched = node.extra.get("launch_time")
        return ObservedInstance(
            id=str(node.id),
            provider=self.name,
            state=_STATES.get(raw_state, InstanceState.PENDING),
            image=node.extra.get("image_id") or "",
            size=node.extra.get("instance_type") or "",
            env=tags.get(TAG_ENV),
            service=tags.get(TAG_SERVICE),
            generation=generation_from_tags(tags),
            slot=slot_from_name(tags.get("Name")),
            fingerprint=tags.get(TAG_SPEC),
            op=tags.get(TAG_OP),
            name=tags.get("Name"),
            private_ip=_first(node.private_ips),
            public_ip=_first(node.public_ips),
            launched_at=datetime.fromisoformat(launched) if launched else None,
            tags=tags,
        )

    # ------------------------------------------------------------ mutation

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        image = NodeImage(id=request.image, name=request.image, driver=self._driver)
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

        def launch() -> Node:
            node: Node = self._driver.create_node(
                name=request.name,
                image=image,
                size=size,
                ex_metadata=dict(request.tags),  # tags ride on RunInstances itself
                ex_userdata=request.user_data,
                # Same operation, same token: EC2 returns the first instance on a retry.
                ex_clienttoken=f"reconciler-{request.op}",
            )
            return node

        try:
            node = self._call("RunInstances", launch)
        except TransientError:
            # The outcome is unknown (e.g. the response was lost): look before relaunching.
            existing = self.find_by_op(owner, request.op)
            if existing is not None:
                return existing
            raise
        return ObservedInstance(
            id=str(node.id),
            provider=self.name,
            state=InstanceState.PENDING,
            image=node.extra.get("image_id") or request.image,
            size=node.extra.get("instance_type") or request.size,
            env=request.tags.get(TAG_ENV),
            service=request.tags.get(TAG_SERVICE),
            generation=generation_from_tags(request.tags),
            slot=slot_from_name(request.name),
            fingerprint=request.tags.get(TAG_SPEC),
            op=request.op,
            name=request.name,
            private_ip=_first(node.private_ips),
            public_ip=_first(node.public_ips),
            tags=dict(request.tags),
        )

    def destroy_instance(self, instance_id: str) -> None:
        node = Node(
            id=instance_id,
            name=instance_id,
            state=NodeState.UNKNOWN,
            public_ips=[],
            private_ips=[],
            driver=self._driver,
        )
        try:
            self._call("TerminateInstances", lambda: self._driver.destroy_node(node))
        except ProviderError as exc:
            if any(code in str(exc) for code in _GONE_CODES):
                return  # already gone: the goal of a destroy is met
            raise

    def price_per_hour(self, size: str) -> float | None:
        try:
            price = get_size_price(
                driver_type="compute", driver_name="ec2_linux", size_id=size, region=self.region
            )
        except (KeyError, LibcloudError):
            return None
        return float(price) if price is not None else None
