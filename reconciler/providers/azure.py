"""Azure adapter: libcloud's Azure ARM driver behind the `ComputeProvider` port.

Owns: everything Azure-specific — paged listings of one resource group
(libcloud's `list_nodes` stops following `nextLink` after a time limit and returns
what it has without an error, and makes three extra requests per VM: here every page
is followed or the listing fails, and the VMs' private addresses come from one paged
NIC listing), state from `provisioningState`, deterministic VM names (ARM PUT by name
is idempotent), the launch body, user data, prices from libcloud's `azure_linux` data,
and translating libcloud/requests exceptions into ours with bounded retries.
Must not: decide what to create or destroy, or let libcloud retry on its own (its
connection, login and `endpoint:` handling are in `azure_connection`).

Tags: Azure tag names may hold ':' (only `< > % & \\ ? /` are refused), so our
identity tags are written and read back under their own names, unmapped.

Leftovers: each VM gets its own NIC (`<vm>-nic`) and managed OS disk (`<vm>-osdisk`),
both created with `deleteOption: Delete`, so Azure removes them with the VM whoever
deletes it; a NIC whose VM could not be created is removed by the failed create.

User data: sent as custom data (cloud-init reads it at first boot) and again as the
VM's `userData`, because Azure never returns custom data and a rollback must relaunch
an instance with the user data it had.

Fault model: 429 (throttling) means the call was not executed; a 5xx, a timeout or a
reset connection means its outcome is unknown. A create whose outcome is unknown is
looked up by its VM name (derived from the operation id) before it is sent again.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import structlog
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
from libcloud.compute.base import Node
from libcloud.compute.drivers.azure_arm import (
    NIC_API_VERSION,
    VM_API_VERSION,
    AzureSubnet,
)
from libcloud.compute.types import NodeState
from libcloud.pricing import get_size_price

from reconciler.errors import (
    ConfigurationError,
    ObservationIncomplete,
    ProviderError,
    TransientError,
)
from reconciler.model import InstanceState, ObservedInstance, ProviderProfile
from reconciler.providers.azure_connection import AzureDriver
from reconciler.providers.azure_resources import (
    action_name,
    encoded,
    image_of,
    image_reference,
    price_key,
    private_ip,
    vm_name,
)
from reconciler.providers.base import (
    TAG_ENV,
    TAG_NAME,
    TAG_OP,
    TAG_OWNER,
    TAG_SERVICE,
    TAG_SPEC,
    LaunchRequest,
    generation_from_tags,
    slot_from_name,
)
from reconciler.providers.calls import OutcomeUnknown, ProviderCalls, launch_once
from reconciler.providers.credentials import resolve_secret

log = structlog.get_logger(__name__)

_MAX_PAGES = 10_000  # a server that never stops paging is a fault, not a fleet
_OS_DISK_TYPE = "StandardSSD_LRS"
_DEFAULT_ADMIN = "azureuser"  # libcloud's default admin user name
# libcloud maps provisioningState (without the per-VM instance view) to these.
_STATES = {
    NodeState.PENDING: InstanceState.PENDING,  # Creating
    NodeState.RUNNING: InstanceState.RUNNING,  # Succeeded
    NodeState.UPDATING: InstanceState.RUNNING,  # Updating: a change to a running VM
    NodeState.TERMINATED: InstanceState.GONE,  # Deleting
    NodeState.ERROR: InstanceState.STOPPED,  # Failed: exists, serves nothing
}
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
    """Our error for a libcloud/requests failure; messages carry the cloud's error code
    and message only (never request URLs, headers or bodies)."""
    if isinstance(exc, TransientError | ProviderError):
        return exc
    if isinstance(exc, InvalidCredsError):
        return ProviderError(f"{action}: the login endpoint rejected the credentials ({exc})")
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(f"{action}: connection timed out")  # never sent
    if isinstance(exc, (requests.RequestException, OSError)):
        return OutcomeUnknown(f"{action}: connection failed ({type(exc).__name__})")
    if isinstance(exc, BaseHTTPError):
        message = str(exc.message)[:300]
        if exc.code == 401:
            return ProviderError(f"{action}: the cloud rejected the credentials")
        if exc.code == 429 or any(code in message for code in _THROTTLE_CODES):
            return TransientError(f"{action}: {message}")
        if exc.code >= 500 or any(code in message for code in _TRANSIENT_CODES):
            return OutcomeUnknown(f"{action}: {message}")
        return ProviderError(f"{action}: {message}")
    if isinstance(exc, (LibcloudError, MalformedResponseError, ValueError, LookupError,
                        TypeError, AttributeError)):  # fmt: skip
        # Not echoed: libcloud puts response bodies in messages, and its ARM error parser
        # itself fails (AttributeError) on a body whose `error` is not an object.
        return OutcomeUnknown(f"{action}: malformed response from the cloud")
    return exc


# ---------------------------------------------------------------- the adapter


class AzureProvider:
    """One Azure resource group in one location as a `ComputeProvider`."""

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
        self._group_path = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
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
        if not isinstance(error, TransientError | ProviderError):
            return error
        for value in self._secrets:
            text = text.replace(value, "[redacted]")
        return error if text == str(error) else type(error)(text)

    # ------------------------------------------------------------ observation

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        return [i for i in self._observe() if i.tags.get(TAG_OWNER) == owner]

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        """VMs of this resource group WITHOUT our owner tag: reported, never touched."""
        return [i for i in self._observe() if i.tags.get(TAG_OWNER) != owner]

    def find_by_op(self, owner: str, op: str) -> ObservedInstance | None:
        found = [
            i
            for i in self._observe()
            if i.alive and i.tags.get(TAG_OWNER) == owner and i.tags.get(TAG_OP) == op
        ]
        return found[0] if found else None

    def _observe(self) -> list[ObservedInstance]:
        """Every VM of the resource group, all pages, with NIC addresses joined in.
        ARM lists cannot filter VMs by tag, so owners are told apart here."""
        vms = self._list_all(
            f"{self._group_path}/providers/Microsoft.Compute/virtualMachines", VM_API_VERSION
        )
        nics = self._list_all(
            f"{self._group_path}/providers/Microsoft.Network/networkInterfaces", NIC_API_VERSION
        )
        addresses = {str(n.get("id", "")).lower(): private_ip(n) for n in nics}
        try:
            return [self._to_observed(vm, addresses) for vm in vms]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # One unreadable VM makes the whole listing untrustworthy.
            raise ObservationIncomplete(
                f"{self.name}: listing held an unreadable virtual machine ({type(exc).__name__})"
            ) from None

    def _list_all(self, path: str, api_version: str) -> list[dict[str, Any]]:
        """Follow every `nextLink`; any page that cannot be read fails the listing."""
        items: dict[str, dict[str, Any]] = {}  # by id: overlapping pages count once
        params = {"api-version": api_version}
        seen: set[str] = set()
        action = action_name("GET", path)
        try:
            for _page in range(_MAX_PAGES):
                body = self._calls.call(action, partial(self._page, path, params))
                for item in body["value"]:
                    items[str(item.get("id", len(items)))] = item
                link = body.get("nextLink")
                if not link:
                    return list(items.values())
                if link in seen:
                    raise ObservationIncomplete(f"{self.name}: listing repeats a page link")
                seen.add(link)
                parsed = urlparse(link)
                path = parsed.path
                params = {"api-version": api_version,
                          **{k: v[0] for k, v in parse_qs(parsed.query).items()}}  # fmt: skip
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

    def _to_observed(self, vm: Mapping[str, Any], addresses: Mapping[str, str | None]
                     ) -> ObservedInstance:  # fmt: skip
        node: Node = self._driver._to_node(vm)
        properties = vm["properties"]
        tags = {str(k): str(v) for k, v in (vm.get("tags") or {}).items()}
        nics = properties.get("networkProfile", {}).get("networkInterfaces", [])
        private = next(
            (ip for ip in (addresses.get(str(n.get("id", "")).lower()) for n in nics) if ip),
            None,
        )
        created = properties.get("timeCreated")
        return ObservedInstance(
            id=str(node.id),
            provider=self.name,
            state=_STATES.get(node.state, InstanceState.PENDING),
            image=image_of(properties["storageProfile"].get("imageReference") or {}),
            size=str(properties["hardwareProfile"]["vmSize"]),
            env=tags.get(TAG_ENV),
            service=tags.get(TAG_SERVICE),
            generation=generation_from_tags(tags),
            slot=slot_from_name(tags.get(TAG_NAME)),
            fingerprint=tags.get(TAG_SPEC),
            op=tags.get(TAG_OP),
            name=tags.get(TAG_NAME),
            private_ip=private,
            public_ip=None,  # no public addresses are created
            launched_at=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
            tags=tags,
        )

    # ------------------------------------------------------------ mutation

    def _vm_path(self, name: str) -> str:
        return f"{self._group_path}/providers/Microsoft.Compute/virtualMachines/{name}"

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        name = vm_name(request.name, request.op)
        body = self._launch_body(name, request)  # refuses a bad image before any request
        nic_id: str | None = None

        def put() -> ObservedInstance:
            nonlocal nic_id
            nic_id, address = self._nic(name)
            body["properties"]["networkProfile"]["networkInterfaces"][0]["id"] = nic_id
            vm = self._request(self._vm_path(name), method="PUT", data=body,
                               params={"api-version": VM_API_VERSION})  # fmt: skip
            return self._to_observed(vm, {nic_id.lower(): address})

        def launch() -> ObservedInstance:
            # PUT by name: a resend cannot make a second VM, but it could try to change
            # one (refused), so an unknown outcome is looked up first (`launch_once`).
            observed = self._calls.attempt("PUT virtualMachines", put)
            log.info("provider_vm_created", provider=self.name, vm=name, op=request.op)
            return observed

        try:
            return launch_once(
                launch,
                retrying=self._calls.retrying("PUT virtualMachines"),
                look_up=partial(self._look_up, name),
                find=partial(self._look_up, name, quiet=True),
            )
        except ProviderError:
            self._discard_nic(nic_id)
            raise

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
                "networkInterfaces": [
                    {"id": "", "properties": {"primary": True, "deleteOption": "Delete"}}
                ]
            },
        }
        if request.user_data:
            os_profile["customData"] = encoded(request.user_data)
            properties["userData"] = encoded(request.user_data)
        return {"location": self.location, "tags": dict(request.tags), "properties": properties}

    def _nic(self, name: str) -> tuple[str, str | None]:
        """The VM's own NIC (id, private address): PUT by name, so resending is safe."""
        subnet = AzureSubnet(self._subnet_id, self._subnet_id.rsplit("/", 1)[-1], {})
        nic = self._driver.ex_create_network_interface(
            f"{name}-nic", subnet, self.resource_group, location=self._driver.default_location
        )
        return str(nic.id), private_ip({"properties": nic.extra})

    def _discard_nic(self, nic_id: str | None) -> None:
        """A NIC whose VM was refused would outlive it: remove it (best effort)."""
        if nic_id is None:
            return
        try:
            self._calls.call(
                "DELETE networkInterfaces",
                partial(self._request, nic_id, method="DELETE",
                        params={"api-version": NIC_API_VERSION}),
            )  # fmt: skip
        except (TransientError, ProviderError) as exc:
            log.warning("provider_nic_left_behind", provider=self.name, nic=nic_id, error=str(exc))

    def _get_vm(self, name_or_id: str, **params: str) -> dict[str, Any] | None:
        path = name_or_id if name_or_id.startswith("/") else self._vm_path(name_or_id)
        try:
            body = self._request(path, params={"api-version": VM_API_VERSION, **params})
        except BaseHTTPError as exc:
            if exc.code == 404:
                return None
            raise
        if not isinstance(body, dict) or "properties" not in body:
            raise OutcomeUnknown("GET virtualMachines: the response is not a virtual machine")
        return body

    def _look_up(self, name: str, *, quiet: bool = False) -> ObservedInstance | None:
        """One unretried GET by name; if it fails the create must not be resent, so the
        failure counts as one more unknown outcome (or, `quiet`, as not found)."""
        try:
            found = self._calls.attempt("GET virtualMachines", partial(self._get_vm, name))
        except (TransientError, ProviderError) as exc:
            if quiet:
                return None
            raise OutcomeUnknown(f"cannot check for an earlier create: {exc}") from None
        if found is None:
            return None
        log.info("provider_launch_found_by_name", provider=self.name, vm=name)
        return self._to_observed(found, {})

    def destroy_instance(self, instance_id: str) -> None:
        """DELETE the VM; its NIC and OS disk go with it (`deleteOption: Delete`). A VM
        that is already gone (404, or 204 from the DELETE) counts as destroyed."""

        def delete() -> None:
            try:
                self._request(instance_id, method="DELETE", params={"api-version": VM_API_VERSION})
            except BaseHTTPError as exc:
                if exc.code not in (204, 404):  # libcloud treats 204 as an error
                    raise

        self._calls.call("DELETE virtualMachines", delete)

    def user_data_of(self, instance_id: str) -> str | None:
        vm = self._calls.call(
            "GET virtualMachines", partial(self._get_vm, instance_id, **{"$expand": "userData"})
        )
        encoded = (vm or {}).get("properties", {}).get("userData")
        return base64.b64decode(encoded).decode("utf-8", "replace") if encoded else None

    # ------------------------------------------------------------ sizes and prices

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
        except (KeyError, LibcloudError):
            return None
        return float(price) if price is not None else None
