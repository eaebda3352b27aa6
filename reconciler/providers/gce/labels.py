"""Our identity tags as GCE labels and names, and back: pure functions, no I/O.

Owns: the reversible tag <-> label mapping (DESIGN §3), the RFC 1035 instance name
derived from a launch, the insert `requestId`, the image reference an operator may
write (and the concrete image a family resolves to), GCE's metadata size limits,
error text made safe to repeat, and reading one instance resource (JSON) into an
`ObservedInstance`. Must not: import libcloud or make a request (`gce.py` does).

GCE labels allow only lowercase letters, digits, '_' and '-', at most 63 characters,
keys starting with a letter. So:

- keys: a fixed table (`reconciler:owner` -> `reconciler_owner`, ...); underscores, not
  hyphens, because a hyphen in a list filter's field path reads as an operator;
- values: kept where already legal, every other byte (and '_' itself) written as
  `_` + two hex digits of its UTF-8 bytes, so `Acme.Corp` -> `_41cme_2e_43orp`;
- `Name` (`<env>-<service>-g<gen>-<n>`) can exceed 63 characters, so it is stored as
  its slot (`reconciler_slot`) and rebuilt from env, service, generation and slot.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from reconciler.errors import GceValueError
from reconciler.model import InstanceState, ObservedInstance
from reconciler.providers.base import (
    TAG_ENV,
    TAG_EPOCH,
    TAG_GENERATION,
    TAG_NAME,
    TAG_OP,
    TAG_OWNER,
    TAG_SERVICE,
    TAG_SPEC,
    generation_from_tags,
    instance_from_tags,
    instance_name,
    slot_from_name,
)

LABEL_LIMIT: Final = 63
LABEL_KEYS: Final[dict[str, str]] = {
    TAG_OWNER: "reconciler_owner",
    TAG_ENV: "reconciler_env",
    TAG_SERVICE: "reconciler_service",
    TAG_GENERATION: "reconciler_generation",
    TAG_SPEC: "reconciler_spec",
    TAG_OP: "reconciler_op",
    TAG_EPOCH: "reconciler_epoch",
}
SLOT_LABEL: Final = "reconciler_slot"
_TAG_KEYS: Final = {label: tag for tag, label in LABEL_KEYS.items()}
_KEPT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9a-f]{2})")
_VALID_VALUE = re.compile(r"[a-z0-9_-]*")

# Metadata keys (not labels: values may be long). GCE does not report an instance's
# image on the instance resource (only on its boot disk), so the adapter records the
# image it launched from here and reads it back.
IMAGE_KEY: Final = "reconciler-image"
USER_DATA_KEY: Final = "startup-script"  # the default: GCE's guest agent runs it
# The metadata keys user data may go under: `user-data` is what cloud-init reads on GCE
# (a #cloud-config there would be run as a shell script under startup-script).
USER_DATA_KEYS: Final = (USER_DATA_KEY, "user-data")
# https://cloud.google.com/compute/docs/metadata/setting-custom-metadata#limitations
METADATA_VALUE_LIMIT: Final = 256 * 1024
METADATA_TOTAL_LIMIT: Final = 512 * 1024

_IMAGE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# In GCE's error text a quote opens a value it refuses (a metadata value, secrets and
# all); these names before a quote are safe to keep: a field path, a quota metric.
_NAMED = re.compile(r"\b(field|Quota) '([A-Za-z0-9_.\[\]/-]{1,100})'")
_KEPT_NAME = re.compile(r"\x00(\d+)\x00")

# https://cloud.google.com/compute/docs/instances/instance-life-cycle and the
# `status` enum of the instances resource (compute v1 reference).
_STATES: Final = {
    "PENDING": InstanceState.PENDING,  # resources being allocated, before PROVISIONING
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "REPAIRING": InstanceState.PENDING,
    # Going down: a graceful shutdown under way (PENDING_STOP) serves no new work.
    "PENDING_STOP": InstanceState.STOPPED,
    # A deleted instance shows STOPPING (then DEPROVISIONING, as its resources are
    # released) until it disappears; a stopped one goes on to TERMINATED. Either way
    # it will not serve again without someone acting.
    "STOPPING": InstanceState.GONE,
    "DEPROVISIONING": InstanceState.GONE,
    "SUSPENDING": InstanceState.STOPPED,
    "SUSPENDED": InstanceState.STOPPED,
    "STOPPED": InstanceState.STOPPED,
    "TERMINATED": InstanceState.STOPPED,  # GCE's word for "stopped", not "deleted"
}
# A status this table does not know (a future one): not counted as serving, and
# reported, rather than guessed to be alive.
_UNKNOWN_STATE: Final = InstanceState.STOPPED


def encode_value(value: str) -> str:
    """`value` in label syntax, reversibly; raises GceValueError past 63 characters."""
    encoded = "".join(
        chr(byte) if byte in _KEPT else f"_{byte:02x}" for byte in value.encode("utf-8")
    )
    if len(encoded) > LABEL_LIMIT:
        raise GceValueError(
            f"{value!r} is {len(encoded)} characters as a GCE label value (limit {LABEL_LIMIT})"
        )
    return encoded


def owner_problem(owner: str) -> str | None:
    """Why `owner` cannot be a GCE label value, or None if it can (validation asks)."""
    encoded = "".join(chr(b) if b in _KEPT else "___" for b in owner.encode("utf-8"))
    if len(encoded) <= LABEL_LIMIT:
        return None
    return (
        f"is {len(encoded)} characters as a GCE label value (at most {LABEL_LIMIT}; every "
        "byte other than a-z, 0-9 and '-' takes 3)"
    )


def decode_value(label: str) -> str:
    """The inverse of `encode_value`; raises GceValueError on text it could not have made."""
    if not _VALID_VALUE.fullmatch(label) or _ESCAPE.sub("", label).count("_"):
        raise GceValueError(f"label value {label!r} is not one this adapter wrote")
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(label):
        raw += label[position : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += label[position:].encode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GceValueError(f"label value {label!r} is not one this adapter wrote") from None


def labels_for(tags: Mapping[str, str]) -> dict[str, str]:
    """GCE labels carrying every identity tag of a launch."""
    labels: dict[str, str] = {}
    for key, value in tags.items():
        if key == TAG_NAME:
            slot = slot_from_name(value)
            if slot is None:
                raise GceValueError(f"Name {value!r} does not end in -g<generation>-<slot>")
            labels[SLOT_LABEL] = str(slot)
        elif key in LABEL_KEYS:
            labels[LABEL_KEYS[key]] = encode_value(value)
        else:
            raise GceValueError(f"tag {key!r} has no GCE label mapping")
    return labels


def tags_from(labels: Mapping[str, str]) -> dict[str, str]:
    """Our tag names back from an instance's labels; other labels pass through as-is."""
    tags: dict[str, str] = {}
    for key, value in labels.items():
        if key in _TAG_KEYS:
            try:
                tags[_TAG_KEYS[key]] = decode_value(value)
            except GceValueError:
                tags[_TAG_KEYS[key]] = value  # edited by hand: seen as is, matches nothing
        elif key != SLOT_LABEL:
            tags[key] = value
    env, service = tags.get(TAG_ENV), tags.get(TAG_SERVICE)
    generation, slot = generation_from_tags(tags), labels.get(SLOT_LABEL, "")
    if env and service and generation is not None and slot.isdigit():
        tags[TAG_NAME] = instance_name(env, service, generation, int(slot))
    return tags


def owner_filter(owner: str, op: str | None = None) -> str:
    """A list `filter` for instances labelled with `owner` (and `op`): server-side."""
    terms = [f'(labels.{LABEL_KEYS[TAG_OWNER]} = "{encode_value(owner)}")']
    if op is not None:
        terms.append(f'(labels.{LABEL_KEYS[TAG_OP]} = "{encode_value(op)}")')
    return " ".join(terms)


def gce_instance_name(name: str, *, owner: str, op: str) -> str:
    """An RFC 1035 instance name: our `Name`, made legal, plus a hash of the operation.

    Names are unique per project and zone, but ours are not (a replacement takes its
    slot's Name while the old instance still runs; two owners may share a project), so
    8 hex digits of the operation make each launch's name its own. The same operation
    always gets the same name, so a repeated insert is refused as `alreadyExists`."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not base[:1].isalpha():
        base = "r-" + base
    digest = hashlib.sha256(f"{owner}\0{op}".encode()).hexdigest()[:8]
    return f"{base[: LABEL_LIMIT - 9].rstrip('-')}-{digest}"


def request_id(owner: str, op: str) -> str:
    """The insert's `requestId` (a UUID): the same operation always sends the same one,
    so GCE answers a resent insert with the first one's operation."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"reconciler:{owner}:{op}"))


def image_reference(image: str, project: str) -> str:
    """The `sourceImage` for what an operator wrote, as a partial resource path.

    Accepted: `projects/<p>/global/images/<name>`, `projects/<p>/global/images/family/<f>`
    (or either as a full https URL), `family/<f>` (in the profile's project), or a bare
    image name (in the profile's project). The adapter resolves a family itself before
    launching (`family_image`), so a generation records one concrete image."""
    path = image.strip()
    marker = path.find("projects/")
    if path.startswith("https://") and marker >= 0:
        path = path[marker:]
    if path.startswith("projects/"):
        parts = path.split("/")
        shape_ok = len(parts) == 5 or (len(parts) == 6 and parts[4] == "family")
        if shape_ok and parts[2:4] == ["global", "images"] and all(parts):
            return path
    elif re.fullmatch(r"(family/)?[a-z]([-a-z0-9]{0,61}[a-z0-9])?", path):
        return f"projects/{project}/global/images/{path}"
    raise GceValueError(
        f"image {image!r} is not an image name, family/<family>, or "
        "projects/<project>/global/images/[family/]<name>"
    )


def is_family(reference: str) -> bool:
    """True for `projects/<p>/global/images/family/<f>` (as `image_reference` makes it)."""
    return reference.split("/")[4:5] == ["family"]


def family_image(reference: str, resource: Any) -> str:
    """The concrete image (`projects/<p>/global/images/<name>`) GCE answered for the family
    `reference`; raises ValueError on an answer that is not an image."""
    if not isinstance(resource, dict) or resource.get("kind") != "compute#image":
        raise ValueError("the answer is not a compute#image")
    name = resource.get("name")
    if not isinstance(name, str) or not _IMAGE_NAME.fullmatch(name):
        raise ValueError("the image name is not one GCE makes")
    project = reference.split("/")[1]  # a family's images live in the family's project
    return f"projects/{project}/global/images/{name}"


def metadata_problem(items: Mapping[str, str]) -> str | None:
    """Why GCE would refuse these metadata items, or None. Checked before an insert, so
    GCE never answers with an error that quotes the value (user data may hold secrets)."""
    total = 0
    for key, value in items.items():
        size = len(value.encode("utf-8"))
        if size > METADATA_VALUE_LIMIT:
            return f"metadata {key!r} is {size} bytes (GCE takes at most {METADATA_VALUE_LIMIT})"
        total += len(key.encode("utf-8")) + size
    if total > METADATA_TOTAL_LIMIT:
        return f"metadata is {total} bytes in all (GCE takes at most {METADATA_TOTAL_LIMIT})"
    return None


def scrubbed_message(text: str, *, limit: int = 200) -> str:
    """A cloud error message safe for exceptions, logs and the ledger: everything from
    its first quote to its last is dropped (GCE quotes the values it refuses, e.g.
    `Invalid value for field 'resource.metadata': '{...}'`), field names and quota
    metrics before a quote are kept, whitespace is folded, the length is capped."""
    names: list[str] = []

    def keep(match: re.Match[str]) -> str:
        names.append(f"{match[1]} '{match[2]}'")
        return f"\x00{len(names) - 1}\x00"

    text = _NAMED.sub(keep, text.replace("\x00", ""))
    quotes = [i for i, c in enumerate(text) if c in "'\"`"]
    if quotes:  # one quote alone may open a value GCE cut short: drop to the end
        end = quotes[-1] + 1 if len(quotes) > 1 else len(text)
        text = f"{text[: quotes[0]]}<value removed>{text[end:]}"
    text = _KEPT_NAME.sub(lambda m: names[int(m[1])], text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def last_segment(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def metadata_value(resource: Mapping[str, Any], key: str) -> str | None:
    for item in (resource.get("metadata") or {}).get("items") or []:
        if item.get("key") == key:
            value = item.get("value")
            return value if isinstance(value, str) else None
    return None


def observed_from(resource: Mapping[str, Any], *, provider: str) -> ObservedInstance:
    """One instance resource (compute#instance JSON) as an observation.

    Raises KeyError/TypeError/ValueError on a resource it cannot read: the caller
    treats that as an unreadable (so incomplete) listing."""
    name = resource["name"]
    if not isinstance(name, str) or not name:
        raise ValueError("instance without a name")
    labels = resource.get("labels") or {}
    if not isinstance(labels, dict):
        raise TypeError("labels is not a mapping")
    tags = tags_from(labels)
    interfaces = resource.get("networkInterfaces") or []
    first = interfaces[0] if interfaces else {}
    access = (first.get("accessConfigs") or [{}])[0]
    created = resource.get("creationTimestamp")
    status = str(resource.get("status"))
    observed = instance_from_tags(
        tags,
        id=name,
        provider=provider,
        state=_STATES.get(status, _UNKNOWN_STATE),
        image=metadata_value(resource, IMAGE_KEY) or "",
        size=last_segment(resource.get("machineType")),
        private_ip=first.get("networkIP"),
        public_ip=access.get("natIP"),
        launched_at=datetime.fromisoformat(created) if created else None,
    )
    if status in _STATES:
        return observed
    return replace(observed, unrecognized_state=status[:40])
