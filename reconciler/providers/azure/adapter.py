"""Azure adapter: libcloud's Azure ARM driver behind the `ComputeProvider` port.

Owns: everything Azure-specific — paged listings (libcloud's `list_nodes` stops
following `nextLink` after a time limit and returns what it has without an error, and
makes three extra requests per VM: here every page is followed or the listing fails),
states, deterministic VM names (ARM PUT by name is idempotent), the launch body, user
data, prices from libcloud's `azure_linux` data, and translating libcloud/requests
exceptions into ours with bounded retries. Must not: decide what to create or destroy,
or let libcloud retry on its own (its connection, login and `endpoint:` handling are in
`azure_connection`).

Observation: one pass reads three paged listings and nothing per VM: the resource
group's VMs (model view: tags, image, size, provisioningState), its NICs (private
addresses) and the subscription's VM statuses (`statusOnly=true`, the only listing
that carries power states; a resource group listing takes `$expand=instanceView` only
with a scale set filter). A VM's state needs both: provisioningState says how its last
operation ended, the power state whether it runs. Resource ids are compared in lower
case (ARM varies their casing) and reported in lower case. So the client needs to read
VMs at subscription scope (e.g. Reader on the subscription) besides its role on the
resource group: without it every listing fails (403) and no pass acts.

Tags: Azure tag names may hold ':' (only `< > % & \\ ? /` are refused), so our
identity tags are written and read back under their own names, unmapped.

Leftovers: a create is ONE request, the VM PUT: the VM's NIC is defined inside it (a
network interface configuration) and its OS disk too, both with `deleteOption:
Delete`, so nothing of a VM exists without the VM and Azure removes both with the VM
whoever deletes it.

User data: sent as custom data (cloud-init reads it at first boot) and again as the
VM's `userData`, because Azure never returns custom data and a rollback must relaunch
an instance with the user data it had.

Fault model: 429 (throttling) means the call was not executed; a 5xx, a timeout, a
reset connection or an answer that cannot be read means its outcome is unknown. A
create whose outcome is unknown is looked up by its VM name (derived from the operation
id) before it is sent again.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import structlog
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.compute.drivers.azure_arm import NIC_API_VERSION
from libcloud.pricing import get_size_price

from reconciler.errors import (
    ConfigurationError,
    ObservationIncomplete,
    OutcomeUnknown,
    ProviderError,
    TransientError,
)
from reconciler.model import ObservedInstance, ProviderProfile
from reconciler.providers.azure.connection import AzureDriver
from reconciler.providers.azure.resources import (
    action_name,
    addresses,
    encoded,
    image_of,
    image_reference,
    instance_state,
    power_states,
    price_key,
    resource_id,
    vm_name,
)
from reconciler.providers.base import (
    TAG_OP,
    TAG_OWNER,
    LaunchRequest,
    LoadBalancerPort,
    VolumePort,
    among,
    instance_from_tags,
)
from reconciler.providers.calls import (
    ProviderCalls,
    launch_once,
    retry_after_seconds,
)
from reconciler.providers.credentials import resolve_secret

log = structlog.get_logger(__name__)

_MAX_PAGES = 10_000  # a server that never stops paging is a fault, not a fleet
# Pinned, not libcloud's: the launch body needs this version's network interface
# configurations (the NIC defined in the VM PUT; the ARM examples show them from
# 2021-11-01 on), `userData` and `deleteOption`, and its listings' `statusOnly`.
_VM_API_VERSION = "2021-11-01"
_NETWORK_API_VERSION = "2020-11-01"  # the Microsoft.Network version Azure makes NICs with
_OS_DISK_TYPE = "StandardSSD_LRS"
_DEFAULT_ADMIN = "azureuser"  # libcloud's default admin user name
# What a VM or NIC listing or a status can hold that this adapter cannot read.
_UNREADABLE = (ValueError, LookupError, TypeError, AttributeError)
# ARM error codes that mean "not now" rather than "never" (throttling: not executed).
_THROTTLE_CODES = ("TooManyRequests", "ServerBusy")
_TRANSIENT_CODES = (*_THROTTLE_CODES, "RetryableError", "AnotherOperationInProgress",
                    "NicInUse", "InternalServerError")  # fmt: skip


def build(
    profile: ProviderProfile, *, on_call: Callable[[str, str], None] | None = None
) -> AzureProvider:
    """The adapter for an `azure` profile (settings checked by validation already)."""
    options = profile.options
    try:
        key_ref, secret_ref = profile.credentials["key"], profile.credentials["secret"]
    except KeyError as exc:
        raise ConfigurationError(
            f"provider {profile.name}: credentials.{exc.args[0]} is required for azure"
        ) from None
    missing = [k for k in ("tenant", "subscription", "resource_group", "network", "subnet",
                           "ssh_key") if not options.get(k)]  # fmt: skip
    if missing:
        raise ConfigurationError(f"provider {profile.name}: azure needs {', '.join(missing)}")
    if not profile.region:
        raise ConfigurationError(f"provider {profile.name}: azure needs region (the location)")
    return AzureProvider(
        profile.name,
        client_id=resolve_secret(key_ref),
        client_secret=resolve_secret(secret_ref),
        tenant=options["tenant"],
        subscription=options["subscription"],
        resource_group=options["resource_group"],
        network=options["network"],
        subnet=options["subnet"],
        location=profile.region,
        ssh_key=options["ssh_key"],
        admin_user=options.get("admin_user") or _DEFAULT_ADMIN,
        endpoint=profile.endpoint,
        timeout=profile.timeout,
        on_call=on_call,
    )


# ---------------------------------------------------------------- errors


def _translate(exc: Exception, action: str) -> Exception:
    """Our error for any failure of a call (libcloud's, requests', or reading the answer);
    messages carry the cloud's error code and message only (never request URLs, headers
    or bodies). Nothing else leaves: an exception of a kind not known here means the
    outcome is unknown."""
    if isinstance(exc, TransientError | ProviderError | ObservationIncomplete
                  | ConfigurationError):  # fmt: skip
        return exc
    if isinstance(exc, InvalidCredsError):
        return ProviderError(f"{action}: the login endpoint rejected the credentials ({exc})")
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(f"{action}: connection timed out")  # never sent
    if isinstance(exc, (requests.RequestException, OSError)):
        return OutcomeUnknown(f"{action}: connection failed ({type(exc).__name__})")
    if isinstance(exc, BaseHTTPError):
        message = str(exc.message)[:300]
        wait = retry_after_seconds(exc.headers)  # a 429's or 503's Retry-After
        if exc.code == 401:
            return ProviderError(f"{action}: the cloud rejected the credentials")
        if exc.code == 429 or any(code in message for code in _THROTTLE_CODES):
            return TransientError(f"{action}: {message}", retry_after=wait)
        if exc.code >= 500 or any(code in message for code in _TRANSIENT_CODES):
            return OutcomeUnknown(f"{action}: {message}", retry_after=wait)
        return ProviderError(f"{action}: {message}")
    if isinstance(exc, (LibcloudError, *_UNREADABLE)):
        # Not echoed: libcloud puts response bodies in messages, and its ARM error parser
        # itself fails (AttributeError) on a body whose `error` is not an object.
        return OutcomeUnknown(f"{action}: malformed response from the cloud")
    return OutcomeUnknown(f"{action}: unexpected failure ({type(exc).__name__})")


# ---------------------------------------------------------------- the adapter


class AzureProvider:
    """One Azure resource group in one location as a `ComputeProvider`."""

    # The longest wait between two looks at booting instances (an Azure VM takes
    # minutes, and ARM limits reads per hour).
    boot_poll_cap = 10.0

    def __init__(
        self,
        name: str,
        *,
        client_id: str,
        client_secret: str,
        tenant: str,
        subscription: str,
        resource_group: str,
        network: str,
        subnet: str,
        location: str,
        ssh_key: str,
        admin_user: str = _DEFAULT_ADMIN,
        endpoint: str | None = None,
        timeout: float = 30.0,
        retry_attempts: int = 5,
        retry_seconds: float = 60.0,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.location = location.lower().replace(" ", "")
        self.resource_group = resource_group
        self._subscription_path = f"/subscriptions/{subscription}"
        self._group_path = f"{self._subscription_path}/resourceGroups/{resource_group}"
        self._subnet_id = (
            f"{self._group_path}/providers/Microsoft.Network/virtualNetworks/{network}"
            f"/subnets/{subnet}"
        )
        self._ssh_key = ssh_key.strip()
        self._admin_user = admin_user
        endpoints = (endpoint, endpoint) if endpoint else None
        self._driver_args = (tenant, subscription, client_id, client_secret, endpoints, timeout)
        self._secrets = tuple(value for value in (client_id, client_secret) if value)
        self._local = threading.local()  # libcloud connections are not thread-safe
        self._on_call = on_call  # hears each request from the connection (`_heard`)
        # No on_call here: the connection reports every request, the login's included.
        self._calls = ProviderCalls(
            name, translate=self._translated, attempts=retry_attempts, seconds=retry_seconds
        )
        self._sizes: frozenset[str] | None = None

    def __repr__(self) -> str:  # names no credential
        return f"AzureProvider({self.name!r}, resource_group={self.resource_group!r})"

    @property
    def _driver(self) -> Any:
        driver = getattr(self._local, "driver", None)
        if driver is None:
            tenant, subscription, key, secret, endpoints, timeout = self._driver_args
            # Logs in: construction is a request, made inside `ProviderCalls.attempt`.
            driver = self._local.driver = AzureDriver(
                tenant, subscription, key, secret, region=self.location, timeout=timeout,
                endpoints=endpoints, on_request=self._heard,
            )  # fmt: skip
        return driver

    def _heard(self, method: str, path: str) -> None:
        if self._on_call is not None:
            self._on_call(self.name, action_name(method, path))

    def _request(self, path: str, *, params: Mapping[str, str], method: str = "GET",
                 data: Any = None) -> Any:  # fmt: skip
        return self._driver.connection.request(path, params=dict(params), data=data,
                                               method=method).object  # fmt: skip

    # ------------------------------------------------------------ errors

    def _translated(self, exc: Exception, action: str) -> Exception:
        return self._redacted(_translate(exc, action))

    def _redacted(self, error: Exception) -> Exception:
        """ARM messages can name the client (`The client '<id>' ... does not have
        authorization`): the credentials never reach a message."""
        text = str(error)
        if not isinstance(error, TransientError | ProviderError | ObservationIncomplete):
            return error
        for value in self._secrets:
            text = text.replace(value, "[redacted]")
        return error if text == str(error) else type(error)(text)

    # ------------------------------------------------------------ observation

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        return [i for i in self._observe() if i.tags.get(TAG_OWNER) == owner]

    def look_up(self, owner: str, ids: Collection[str]) -> Sequence[ObservedInstance]:
        return among(self.list_owned(owner), ids)  # no listing by ids here: one listing

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        """VMs of this resource group WITHOUT our owner tag: reported, never touched."""
        return [i for i in self._observe() if i.tags.get(TAG_OWNER) != owner]

    def load_balancers(self) -> LoadBalancerPort | None:
        return None  # no load-balancer port for this cloud yet: validation refuses libcloud-lb

    def volumes(self) -> VolumePort | None:
        return None  # no volume hand-over for this cloud yet: validation refuses `volume:`

    def find_by_op(self, owner: str, op: str) -> ObservedInstance | None:
        found = [
            i
            for i in self._observe()
            if i.alive and i.tags.get(TAG_OWNER) == owner and i.tags.get(TAG_OP) == op
        ]
        return found[0] if found else None

    def _observe(self) -> list[ObservedInstance]:
        """Every VM of the resource group with its address and power state joined in:
        three listings, each read to its last page. ARM lists cannot filter VMs by tag,
        so owners are told apart here."""
        version = {"api-version": _VM_API_VERSION}
        vms = self._list_all(
            f"{self._group_path}/providers/Microsoft.Compute/virtualMachines", version
        )
        nics = self._list_all(
            f"{self._group_path}/providers/Microsoft.Network/networkInterfaces",
            {"api-version": NIC_API_VERSION},
        )
        statuses = self._list_all(
            f"{self._subscription_path}/providers/Microsoft.Compute/virtualMachines",
            {**version, "statusOnly": "true"},
        )
        try:
            power, ips = power_states(statuses), addresses(nics)
            return [self._to_observed(vm, addresses=ips, power=power) for vm in vms]
        except _UNREADABLE as exc:
            # One unreadable VM, NIC or status makes the whole listing untrustworthy.
            raise ObservationIncomplete(
                f"{self.name}: a listing held an unreadable item ({type(exc).__name__})"
            ) from None

    def _list_all(self, path: str, params: Mapping[str, str]) -> list[Any]:
        """Follow every `nextLink` (keeping `params` unless the link sets them); any page
        that cannot be read fails the listing."""
        items: dict[str, Any] = {}  # by id: overlapping pages count once
        page_params = dict(params)
        seen: set[str] = set()
        action = action_name("GET", path)
        try:
            for _page in range(_MAX_PAGES):
                body = self._calls.call(action, partial(self._page, path, page_params))
                for item in body["value"]:
                    key = item.get("id") if isinstance(item, dict) else None
                    items[str(key).lower() if key else f"#{len(items)}"] = item
                link = body.get("nextLink")
                if not link:
                    return list(items.values())
                if not isinstance(link, str) or link in seen:
                    raise ObservationIncomplete(f"{self.name}: listing has a bad page link")
                seen.add(link)
                parsed = urlparse(link)
                path = parsed.path
                page_params = {**params, **{k: v[0] for k, v in parse_qs(parsed.query).items()}}
        except (TransientError, ProviderError) as exc:
            raise ObservationIncomplete(f"{self.name}: listing failed: {exc}") from None
        raise ObservationIncomplete(f"{self.name}: listing did not end after {_MAX_PAGES} pages")

    def _page(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        body = self._request(path, params=params)
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            # A 200 that is not a listing would read as "no instances" and make the
            # planner replace the whole fleet.
            raise OutcomeUnknown("list: the response is not an ARM listing")
        return body

    def _to_observed(
        self,
        vm: Mapping[str, Any],
        *,
        addresses: Mapping[str, str] | None = None,
        power: Mapping[str, str] | None = None,
    ) -> ObservedInstance:
        """One VM as observed; without `power` its state comes from provisioningState
        alone (a VM created after the status listing was read, or one just PUT)."""
        vm_id = resource_id(vm["id"])
        properties = vm["properties"]
        tags = {str(k): str(v) for k, v in (vm.get("tags") or {}).items()}
        ips = addresses or {}
        nics = (properties.get("networkProfile") or {}).get("networkInterfaces") or []
        private = ips.get(vm_id) or next(
            (ips[nic_id] for nic_id in (resource_id(n.get("id")) for n in nics) if nic_id in ips),
            None,
        )
        created = properties.get("timeCreated")
        return instance_from_tags(
            tags,
            id=vm_id,
            provider=self.name,
            state=instance_state(
                str(properties.get("provisioningState") or ""), (power or {}).get(vm_id)
            ),
            image=image_of(properties["storageProfile"].get("imageReference") or {}),
            size=str(properties["hardwareProfile"]["vmSize"]),
            private_ip=private,
            public_ip=None,  # no public addresses are created
            launched_at=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
        )

    # ------------------------------------------------------------ mutation

    def _vm_path(self, name: str) -> str:
        return f"{self._group_path}/providers/Microsoft.Compute/virtualMachines/{name}"

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        name = vm_name(request.name, request.op)
        body = self._launch_body(name, request)  # refuses a bad image before any request

        def put() -> ObservedInstance:
            vm = self._request(self._vm_path(name), method="PUT", data=body,
                               params={"api-version": _VM_API_VERSION})  # fmt: skip
            return self._to_observed(vm)

        def launch() -> ObservedInstance:
            # PUT by name: a resend cannot make a second VM, but it could try to change
            # one (refused), so an unknown outcome is looked up first (`launch_once`).
            observed = self._calls.attempt("PUT virtualMachines", put)
            log.info("provider_vm_created", provider=self.name, vm=name, op=request.op)
            return observed

        return launch_once(
            launch,
            retrying=self._calls.retrying("PUT virtualMachines"),
            look_up=partial(self._look_up, name),
            find=partial(self._look_up, name, quiet=True),
        )

    def _launch_body(self, name: str, request: LaunchRequest) -> dict[str, Any]:
        os_profile: dict[str, Any] = {
            "computerName": name,
            "adminUsername": self._admin_user,
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {"publicKeys": [{"keyData": self._ssh_key,
                                        "path": f"/home/{self._admin_user}/.ssh/authorized_keys"}]},
            },
        }  # fmt: skip
        # The NIC as part of the VM: Azure makes it with the VM (or not at all), names it
        # itself and deletes it with the VM, so no create leaves a NIC without a VM.
        nic = {
            "name": f"{name}-nic",
            "properties": {
                "primary": True,
                "deleteOption": "Delete",
                "ipConfigurations": [
                    {"name": "ipconfig1",
                     "properties": {"primary": True, "subnet": {"id": self._subnet_id}}}
                ],
            },
        }  # fmt: skip
        properties: dict[str, Any] = {
            "hardwareProfile": {"vmSize": request.size},
            "storageProfile": {
                "imageReference": image_reference(request.image),
                "osDisk": {
                    "name": f"{name}-osdisk",
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": {"storageAccountType": _OS_DISK_TYPE},
                    "deleteOption": "Delete",
                },
            },
            "osProfile": os_profile,
            "networkProfile": {
                "networkApiVersion": _NETWORK_API_VERSION,
                "networkInterfaceConfigurations": [nic],
            },
        }
        if request.user_data:
            os_profile["customData"] = encoded(request.user_data)
            properties["userData"] = encoded(request.user_data)
        return {"location": self.location, "tags": dict(request.tags), "properties": properties}

    def _get_vm(self, name_or_id: str, **params: str) -> dict[str, Any] | None:
        path = name_or_id if name_or_id.startswith("/") else self._vm_path(name_or_id)
        try:
            body = self._request(path, params={"api-version": _VM_API_VERSION, **params})
        except BaseHTTPError as exc:
            if exc.code == 404:
                return None
            raise
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise OutcomeUnknown("GET virtualMachines: the response is not a virtual machine")
        return body

    def _found(self, name: str) -> ObservedInstance | None:
        vm = self._get_vm(name)
        return self._to_observed(vm) if vm is not None else None

    def _look_up(self, name: str, *, quiet: bool = False) -> ObservedInstance | None:
        """One unretried GET by name; if it fails the create must not be resent, so the
        failure counts as one more unknown outcome (or, `quiet`, as not found)."""
        try:
            found = self._calls.attempt("GET virtualMachines", partial(self._found, name))
        except (TransientError, ProviderError) as exc:
            if quiet:
                return None
            raise OutcomeUnknown(f"cannot check for an earlier create: {exc}") from None
        if found is not None:
            log.info("provider_launch_found_by_name", provider=self.name, vm=name)
        return found

    def destroy_instance(self, instance_id: str) -> None:
        """DELETE the VM; its NIC and OS disk go with it (`deleteOption: Delete`). A VM
        that is already gone (404, or 204 from the DELETE) counts as destroyed."""
        path = instance_id.lower()  # as listed; ARM paths are case-insensitive

        def delete() -> None:
            try:
                self._request(path, method="DELETE", params={"api-version": _VM_API_VERSION})
            except BaseHTTPError as exc:
                if exc.code not in (204, 404):  # libcloud treats 204 as an error
                    raise

        self._calls.call("DELETE virtualMachines", delete)

    def user_data_of(self, instance_id: str) -> str | None:
        vm = self._calls.call(
            "GET virtualMachines",
            partial(self._get_vm, instance_id.lower(), **{"$expand": "userData"}),
        )
        try:
            data = vm["properties"].get("userData") if vm is not None else None
            text = base64.b64decode(data, validate=True) if data else None
        except _UNREADABLE:  # binascii.Error is a ValueError
            raise ProviderError("GET virtualMachines: the VM's userData is not base64") from None
        return text.decode("utf-8", "replace") if text is not None else None

    # ------------------------------------------------------------ sizes and prices

    def size_warning(self, size: str) -> str | None:
        return None  # this cloud's size listing says nothing of deprecation

    def known_sizes(self) -> frozenset[str] | None:
        """The location's VM sizes: one request per adapter."""
        if self._sizes is None:
            sizes = self._calls.call("GET vmSizes", lambda: self._driver.list_sizes())
            self._sizes = frozenset(str(size.id) for size in sizes)
        return self._sizes

    def price_per_hour(self, size: str) -> float | None:
        """Linux pay-as-you-go price from libcloud's bundled data (not the live rate card)."""
        try:
            price = get_size_price(
                driver_type="compute",
                driver_name="azure_linux",
                size_id=price_key(size),
                region=self.location,
            )
        except (LibcloudError, *_UNREADABLE):
            return None
        return float(price) if price is not None else None
