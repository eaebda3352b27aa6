"""Azure names and documents without libcloud: VM names, image references, price keys,
instance states and addresses.

Owns: the pure mappings between what a desired state says (a `Name` tag and an
operation id, an image string, a size) and what ARM wants or answers, and the reading
of ARM listings (power states, NIC addresses). Must not: make requests (azure.py does)
or import libcloud. Readers raise ValueError on an answer they cannot read: the caller
decides what an unreadable answer means.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from reconciler.errors import ProviderError
from reconciler.model import InstanceState

_VM_NAME_MAX = 64  # Linux VM and computer names
_OP_CHARS = 12  # of the operation id, in the VM name
# PowerState/<code> of a VM's instance view (stopped: billed for compute; deallocated: not).
_POWER = {
    "running": InstanceState.RUNNING,
    "starting": InstanceState.PENDING,
    "stopping": InstanceState.STOPPED,
    "stopped": InstanceState.STOPPED,
    "deallocating": InstanceState.STOPPED,
    "deallocated": InstanceState.STOPPED,
}


def vm_name(name: str, op: str) -> str:
    """The VM's name: its Name tag plus the operation, so a retried create addresses the
    same VM and a replacement in the same slot does not. Only [A-Za-z0-9-]: the name is
    also the Linux computer name."""
    suffix = "-" + re.sub(r"[^A-Za-z0-9]", "", op)[:_OP_CHARS]
    stem = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")[: _VM_NAME_MAX - len(suffix)]
    return (stem or "vm") + suffix


def image_reference(image: str) -> dict[str, str]:
    """A marketplace URN `publisher:offer:sku:version`, or an image resource id."""
    if image.startswith("/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4 or not all(parts):
        raise ProviderError(
            f"image {image!r}: expected publisher:offer:sku:version or an image resource id"
        )
    return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))


def image_of(reference: Mapping[str, Any]) -> str:
    """The inverse of `image_reference`: how an observed VM's image is reported; "" (not
    known) for a VM with no image reference, e.g. one created from a disk or whose OS
    disk was swapped."""
    if reference.get("id"):
        return str(reference["id"])
    parts = [str(reference.get(k) or "") for k in ("publisher", "offer", "sku", "version")]
    return ":".join(parts) if all(parts) else ""


def encoded(text: str) -> str:
    """User data as ARM takes it (customData, userData): base64 of its UTF-8 bytes."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def price_key(size: str) -> str:
    """libcloud's `azure_linux` key for a VM size: `Standard_D2s_v3` -> `standardd2sv3`."""
    return re.sub(r"[^a-z0-9]", "", size.lower())


def action_name(method: str, path: str) -> str:
    """`GET virtualMachines`, `PUT networkInterfaces`: the resource type a request is on."""
    if path == "token":
        return "POST token"
    parts = [p for p in urlparse(path).path.split("/") if p]
    if "providers" in parts:
        parts = parts[parts.index("providers") + 2 :]  # past the namespace
    types = parts[0::2]
    return f"{method} {types[-1] if types else 'subscription'}"


def resource_id(value: Any) -> str:
    """A resource id as compared here: ARM varies the casing of ids it returns (the
    subscription-wide listing upper-cases resource group names), and ids are
    case-insensitive, so every id is kept in lower case."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("not a resource id")
    return value.lower()


def instance_state(provisioning: str, power: str | None) -> InstanceState:
    """A VM's state from its provisioningState (the last operation's outcome) and its
    power state (None when unknown: a VM created after the status listing was read).
    A running VM whose last operation failed still serves; a stopped or deallocated
    VM whose last operation succeeded serves nothing."""
    provisioning = provisioning.lower()
    if provisioning == "deleting":
        return InstanceState.GONE
    if provisioning == "creating":
        return InstanceState.PENDING
    if power in _POWER:
        return _POWER[power]
    if provisioning == "failed":
        return InstanceState.STOPPED
    if provisioning in ("succeeded", "updating"):
        return InstanceState.RUNNING
    return InstanceState.PENDING


def power_states(vms: Iterable[Any]) -> dict[str, str]:
    """VM id -> power state (`running`, `deallocated`, ...) from a `statusOnly=true`
    listing, whose VMs carry only their instance view's statuses."""
    found: dict[str, str] = {}
    for vm in vms:
        if not isinstance(vm, Mapping):
            raise ValueError("a listed VM is not an object")
        view = (vm.get("properties") or {}).get("instanceView") or {}
        statuses = view.get("statuses") or []
        if not isinstance(statuses, list):
            raise ValueError("statuses is not a list")
        for status in statuses:
            code = status.get("code") if isinstance(status, Mapping) else None
            if not isinstance(code, str):
                raise ValueError("a status has no code")
            kind, _, value = code.partition("/")
            if kind.lower() == "powerstate":
                found[resource_id(vm.get("id"))] = value.lower()
    return found


def addresses(nics: Iterable[Any]) -> dict[str, str]:
    """Resource id -> private address, from a NIC listing: each NIC under its own id
    and under the id of the VM it is attached to (a NIC made from a VM's network
    interface configuration gets a name Azure derives, so VMs are joined to NICs by
    the VM the NIC names). A VM's primary NIC wins over its others."""
    by_nic: dict[str, str] = {}
    by_vm: dict[str, tuple[bool, str]] = {}
    for nic in nics:
        if not isinstance(nic, Mapping):
            raise ValueError("a listed NIC is not an object")
        address = private_ip(nic)
        if address is None:
            continue
        by_nic[resource_id(nic.get("id"))] = address
        properties = nic.get("properties") or {}
        vm = (properties.get("virtualMachine") or {}).get("id")
        if vm is not None:
            primary = properties.get("primary") is True
            if primary or resource_id(vm) not in by_vm:
                by_vm[resource_id(vm)] = (primary, address)
    return {**by_nic, **{vm: address for vm, (_, address) in by_vm.items()}}


def private_ip(nic: Mapping[str, Any]) -> str | None:
    """A NIC's primary private address (None if it has none yet)."""
    try:
        configs = nic["properties"]["ipConfigurations"]
        primary = next((c for c in configs if c.get("properties", {}).get("primary")), configs[0])
        address = primary["properties"].get("privateIPAddress")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return str(address) if address else None
