"""EC2 data volumes and instance stop/start: the `VolumePort` of the EC2 adapter.

Owns: DescribeVolumes (paginated, owner-filtered and checked again here), CreateVolume
with every tag in the same call (TagSpecification) and a ClientToken from the
operation id, AttachVolume, DetachVolume naming the instance, CreateSnapshot with
tags, StopInstances, StartInstances and DeleteVolume, through the adapter's bounded
retries and error translation. Must not: wait or decide (apply's hand-over does both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from libcloud.compute.drivers.ec2 import NAMESPACE
from libcloud.utils.xml import findall, findtext

from reconciler.errors import ObservationIncomplete, OutcomeUnknown, ProviderError
from reconciler.model import ObservedVolume
from reconciler.providers.base import TAG_ENV, TAG_OP, TAG_OWNER, TAG_SERVICE, VolumeRequest
from reconciler.providers.calls import launch_once

if TYPE_CHECKING:
    from reconciler.providers.ec2.adapter import Ec2Provider

_PAGE_SIZE = 500  # DescribeVolumes' largest page
# EBS list prices per GiB-month (us-east-1; libcloud carries none for volumes). The
# ledger records the price a volume was created at; other regions differ by a few %.
EBS_PRICES: dict[str, float] = {
    "standard": 0.05, "gp2": 0.10, "gp3": 0.08, "io1": 0.125, "io2": 0.125,
    "st1": 0.045, "sc1": 0.015,
}  # fmt: skip
EBS_DEFAULT_TYPE = "gp2"  # what CreateVolume makes when no type is given
EBS_SNAPSHOT_PRICE = 0.05
# "Already there" answers of an idempotent step: the goal is met.
_ALREADY = (
    "IncorrectState", "VolumeInUse", "InvalidAttachment.NotFound", "IncorrectInstanceState",
)  # fmt: skip


def _tag_params(prefix: str, resource: str, tags: Mapping[str, str]) -> dict[str, str]:
    params = {f"{prefix}.ResourceType": resource}
    for n, (key, value) in enumerate(sorted(tags.items()), start=1):
        params[f"{prefix}.Tag.{n}.Key"] = key
        params[f"{prefix}.Tag.{n}.Value"] = value
    return params


class Ec2Volumes:
    def __init__(self, adapter: Ec2Provider) -> None:
        self._adapter = adapter
        self.name = adapter.name

    def _call(self, action: str, params: dict[str, str], *, retry: bool = True) -> Any:
        return self._adapter._calls.call(
            action, partial(self._adapter._request, {"Action": action, **params}), retry=retry
        )

    # ------------------------------------------------------------ reading

    def list_owned(self, owner: str) -> Sequence[ObservedVolume]:
        found = self._describe({"tag:" + TAG_OWNER: owner})
        return [v for v in found if v.tags.get(TAG_OWNER) == owner]

    def describe(self, volume_id: str) -> ObservedVolume | None:
        found = self._describe({"volume-id": volume_id})
        return next((v for v in found if v.id == volume_id), None)

    def _find_by_op(self, owner: str, op: str, *, retry: bool = True) -> ObservedVolume | None:
        found = self._describe({"tag:" + TAG_OWNER: owner, "tag:" + TAG_OP: op}, retry=retry)
        return next((v for v in found if v.tags.get(TAG_OP) == op), None)

    def _describe(self, filters: dict[str, str], *, retry: bool = True) -> list[ObservedVolume]:
        return self._adapter.listing(
            "DescribeVolumes", filters, "volumeSet/item", self._to_observed,
            page_size=_PAGE_SIZE, what="volume listing", item="volume", retry=retry,
        )  # fmt: skip

    def _to_observed(self, item: Any) -> ObservedVolume:
        tags = {
            str(findtext(t, "key", NAMESPACE)): str(findtext(t, "value", NAMESPACE) or "")
            for t in findall(item, "tagSet/item", NAMESPACE)
        }
        attachments = [
            a for a in findall(item, "attachmentSet/item", NAMESPACE)
            if findtext(a, "status", NAMESPACE) != "detached"
        ]  # fmt: skip
        attached = attachments[0] if attachments else None
        return ObservedVolume(
            id=str(findtext(item, "volumeId", NAMESPACE)),
            provider=self.name,
            state=str(findtext(item, "status", NAMESPACE) or ""),
            size=int(findtext(item, "size", NAMESPACE) or 0),
            zone=str(findtext(item, "availabilityZone", NAMESPACE) or ""),
            type=findtext(item, "volumeType", NAMESPACE),
            attached_to=findtext(attached, "instanceId", NAMESPACE) if attached is not None
            else None,
            attachment=findtext(attached, "status", NAMESPACE) if attached is not None else None,
            device=findtext(attached, "device", NAMESPACE) if attached is not None else None,
            env=tags.get(TAG_ENV),
            service=tags.get(TAG_SERVICE),
            op=tags.get(TAG_OP),
            tags=tags,
        )  # fmt: skip

    def instance_state(self, instance_id: str) -> str | None:
        try:
            body = self._call("DescribeInstances", {"InstanceId.1": instance_id})
        except ProviderError as exc:
            if "InvalidInstanceID" in str(exc):
                return None
            raise
        states = [
            findtext(item, "instanceState/name", NAMESPACE)
            for item in findall(body, "reservationSet/item/instancesSet/item", NAMESPACE)
        ]
        return states[0] if states else None

    # ------------------------------------------------------------ changing

    def create(self, request: VolumeRequest) -> ObservedVolume:
        params = {
            "Size": str(request.size),
            "AvailabilityZone": request.zone,
            "ClientToken": f"reconciler-{request.op}",
            **_tag_params("TagSpecification.1", "volume", request.tags),
        }
        if request.type:
            params["VolumeType"] = request.type
        owner = request.tags[TAG_OWNER]

        def create() -> ObservedVolume:
            request_params = {"Action": "CreateVolume", **params}
            body = self._adapter._calls.attempt(
                "CreateVolume", partial(self._adapter._request, request_params)
            )
            volume_id = findtext(body, "volumeId", NAMESPACE)
            if not volume_id:
                raise OutcomeUnknown("CreateVolume: the response names no volume")
            return ObservedVolume(
                id=str(volume_id), provider=self.name,
                state=str(findtext(body, "status", NAMESPACE) or "creating"),
                size=request.size, zone=request.zone, type=request.type,
                env=request.tags.get(TAG_ENV), service=request.tags.get(TAG_SERVICE),
                op=request.op, tags=dict(request.tags),
            )  # fmt: skip

        def look_up() -> ObservedVolume | None:
            try:
                return self._find_by_op(owner, request.op, retry=False)
            except ObservationIncomplete as exc:
                raise OutcomeUnknown(
                    f"CreateVolume: cannot check for an earlier one: {exc}"
                ) from None

        return launch_once(
            create, retrying=self._adapter._calls.retrying("CreateVolume"), look_up=look_up,
            find=partial(self._find_by_op, owner, request.op),
        )  # fmt: skip

    def _idempotent(self, action: str, params: dict[str, str]) -> None:
        try:
            self._call(action, params)
        except ProviderError as exc:
            if not any(code in str(exc) for code in _ALREADY):
                raise

    def attach(self, volume_id: str, instance_id: str, device: str) -> None:
        current = self.describe(volume_id)
        if current is not None and current.attached_to == instance_id:
            return  # already there (a step redone after a crash)
        self._idempotent(
            "AttachVolume", {"VolumeId": volume_id, "InstanceId": instance_id, "Device": device}
        )

    def detach(self, volume_id: str, instance_id: str) -> None:
        current = self.describe(volume_id)
        if current is None or current.attached_to != instance_id:
            return  # not attached there (any more): the goal is met
        self._idempotent("DetachVolume", {"VolumeId": volume_id, "InstanceId": instance_id})

    def snapshot(self, volume_id: str, tags: Mapping[str, str]) -> str:
        params = {"VolumeId": volume_id, "Description": f"reconciler: {tags.get(TAG_OP, '')}",
                  **_tag_params("TagSpecification.1", "snapshot", tags)}  # fmt: skip
        body = self._call("CreateSnapshot", params)
        snapshot_id = findtext(body, "snapshotId", NAMESPACE)
        if not snapshot_id:
            raise OutcomeUnknown("CreateSnapshot: the response names no snapshot")
        return str(snapshot_id)

    def snapshots(self, volume_id: str) -> Sequence[tuple[str, Mapping[str, str]]]:
        body = self._call("DescribeSnapshots", {"Owner.1": "self", "Filter.1.Name": "volume-id",
                                                "Filter.1.Value.1": volume_id})  # fmt: skip
        found: list[tuple[str, Mapping[str, str]]] = []
        for item in findall(body, "snapshotSet/item", NAMESPACE):
            if findtext(item, "volumeId", NAMESPACE) != volume_id:
                continue  # filters are a convenience, not the guard
            tags = {
                str(findtext(t, "key", NAMESPACE)): str(findtext(t, "value", NAMESPACE) or "")
                for t in findall(item, "tagSet/item", NAMESPACE)
            }
            found.append((str(findtext(item, "snapshotId", NAMESPACE)), tags))
        return found

    def stop_instance(self, instance_id: str) -> None:
        self._idempotent("StopInstances", {"InstanceId.1": instance_id})

    def start_instance(self, instance_id: str) -> None:
        self._idempotent("StartInstances", {"InstanceId.1": instance_id})

    def delete(self, volume_id: str) -> None:
        try:
            self._call("DeleteVolume", {"VolumeId": volume_id})
        except ProviderError as exc:
            if "InvalidVolume.NotFound" not in str(exc):
                raise

    def price_per_gib_month(self, volume_type: str | None) -> float | None:
        return EBS_PRICES.get(volume_type or EBS_DEFAULT_TYPE)

    def snapshot_price_per_gib_month(self) -> float | None:
        return EBS_SNAPSHOT_PRICE
