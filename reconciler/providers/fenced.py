"""A provider behind the fence: every create, destroy and load-balancer change asks first.

Owns: checking the `Fence` immediately before each mutating call (so a leader whose
lease ran out while it was paused sends nothing), and stamping the leader's epoch on
every instance it launches (`reconciler:epoch`). Must not: change what is read, or
retry: a closed fence raises `NotLeader` and the pass stops there.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from reconciler.fencing import Fence
from reconciler.model import ObservedInstance, ObservedVolume
from reconciler.providers.base import (
    TAG_EPOCH,
    ComputeProvider,
    LaunchRequest,
    LoadBalancerPort,
    VolumePort,
    VolumeRequest,
)


class FencedLoadBalancers:
    def __init__(self, inner: LoadBalancerPort, fence: Fence, provider: str) -> None:
        self._inner = inner
        self._fence = fence
        self._provider = provider

    def members(self, balancer: str) -> set[str]:
        return self._inner.members(balancer)

    def attach(self, balancer: str, instance_ids: Sequence[str]) -> None:
        self._fence.check(f"attach to load balancer {balancer} ({self._provider})")
        self._inner.attach(balancer, instance_ids)

    def detach(self, balancer: str, instance_ids: Sequence[str]) -> None:
        self._fence.check(f"detach from load balancer {balancer} ({self._provider})")
        self._inner.detach(balancer, instance_ids)

    def in_service(self, balancer: str) -> set[str]:
        return self._inner.in_service(balancer)


class FencedVolumes:
    def __init__(self, inner: VolumePort, fence: Fence, provider: str) -> None:
        self._inner = inner
        self._fence = fence
        self._provider = provider

    def _check(self, what: str) -> None:
        self._fence.check(f"{what} ({self._provider})")

    def list_owned(self, owner: str) -> Sequence[ObservedVolume]:
        return self._inner.list_owned(owner)

    def describe(self, volume_id: str) -> ObservedVolume | None:
        return self._inner.describe(volume_id)

    def instance_state(self, instance_id: str) -> str | None:
        return self._inner.instance_state(instance_id)

    def create(self, request: VolumeRequest) -> ObservedVolume:
        self._check(f"create volume for {request.tags.get('reconciler:volume')}")
        epoch = self._fence.epoch
        if epoch is not None:
            request = replace(request, tags={**request.tags, TAG_EPOCH: str(epoch)})
        return self._inner.create(request)

    def attach(self, volume_id: str, instance_id: str, device: str) -> None:
        self._check(f"attach {volume_id} to {instance_id}")
        self._inner.attach(volume_id, instance_id, device)

    def detach(self, volume_id: str, instance_id: str) -> None:
        self._check(f"detach {volume_id} from {instance_id}")
        self._inner.detach(volume_id, instance_id)

    def snapshot(self, volume_id: str, tags: Mapping[str, str]) -> str:
        self._check(f"snapshot {volume_id}")
        return self._inner.snapshot(volume_id, tags)

    def snapshots(self, volume_id: str) -> Sequence[tuple[str, Mapping[str, str]]]:
        return self._inner.snapshots(volume_id)

    def stop_instance(self, instance_id: str) -> None:
        self._check(f"stop {instance_id}")
        self._inner.stop_instance(instance_id)

    def start_instance(self, instance_id: str) -> None:
        self._check(f"start {instance_id}")
        self._inner.start_instance(instance_id)

    def delete(self, volume_id: str) -> None:
        self._check(f"delete volume {volume_id}")
        self._inner.delete(volume_id)

    def price_per_gib_month(self, volume_type: str | None) -> float | None:
        return self._inner.price_per_gib_month(volume_type)

    def snapshot_price_per_gib_month(self) -> float | None:
        return self._inner.snapshot_price_per_gib_month()


class FencedProvider:
    """`inner` with the fence checked before each of its mutations."""

    def __init__(self, inner: ComputeProvider, fence: Fence) -> None:
        self._inner = inner
        self._fence = fence
        self.name = inner.name
        self.boot_poll_cap = getattr(inner, "boot_poll_cap", None)

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        return self._inner.list_owned(owner)

    def look_up(self, owner: str, ids: Collection[str]) -> Sequence[ObservedInstance]:
        return self._inner.look_up(owner, ids)

    def find_by_op(self, owner: str, op: str) -> ObservedInstance | None:
        return self._inner.find_by_op(owner, op)

    def load_balancers(self) -> LoadBalancerPort | None:
        port = self._inner.load_balancers()
        return FencedLoadBalancers(port, self._fence, self.name) if port is not None else None

    def volumes(self) -> VolumePort | None:
        port = self._inner.volumes()
        return FencedVolumes(port, self._fence, self.name) if port is not None else None

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        self._fence.check(f"create {request.name} ({self.name})")
        epoch = self._fence.epoch
        if epoch is not None:
            request = replace(request, tags={**request.tags, TAG_EPOCH: str(epoch)})
        return self._inner.create_instance(request)

    def destroy_instance(self, instance_id: str) -> None:
        self._fence.check(f"destroy {instance_id} ({self.name})")
        self._inner.destroy_instance(instance_id)

    def known_sizes(self) -> frozenset[str] | None:
        return self._inner.known_sizes()

    def price_per_hour(self, size: str) -> float | None:
        return self._inner.price_per_hour(size)

    def size_warning(self, size: str) -> str | None:
        return self._inner.size_warning(size)

    def user_data_of(self, instance_id: str) -> str | None:
        return self._inner.user_data_of(instance_id)

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        return self._inner.list_unowned(owner)
