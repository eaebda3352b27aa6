"""Azure names and documents without libcloud: VM names, image references, price keys.

Owns: the pure mappings between what a desired state says (a `Name` tag and an
operation id, an image string, a size) and what ARM wants or answers. Must not: make
requests (azure.py does) or import libcloud.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from reconciler.errors import ProviderError

_VM_NAME_MAX = 64  # Linux VM and computer names
_OP_CHARS = 12  # of the operation id, in the VM name


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
    """The inverse of `image_reference`: how an observed VM's image is reported."""
    if reference.get("id"):
        return str(reference["id"])
    return ":".join(str(reference.get(k, "")) for k in ("publisher", "offer", "sku", "version"))


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


def private_ip(nic: Mapping[str, Any]) -> str | None:
    """A NIC's primary private address (None if it has none yet)."""
    try:
        configs = nic["properties"]["ipConfigurations"]
        primary = next((c for c in configs if c.get("properties", {}).get("primary")), configs[0])
        address = primary["properties"].get("privateIPAddress")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return str(address) if address else None
