"""The provider port: what the core needs from a cloud, independent of libcloud.

Owns: the `ComputeProvider` protocol, the launch request value, and the identity tags
of DESIGN §3. Must not: import libcloud (adapters do) or decide anything (the planner does).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from reconciler.model import (
    GENERATION_TAG,
    IDENTITY_NAME,
    InstanceState,
    ObservedInstance,
    ObservedVolume,
)

TAG_OWNER = "reconciler:owner"
TAG_ENV = "reconciler:env"
TAG_SERVICE = "reconciler:service"
TAG_GENERATION = "reconciler:generation"
TAG_SPEC = "reconciler:spec"
TAG_OP = "reconciler:op"
TAG_NAME = "Name"
# The leader's epoch under `--coordination` (absent without it): whose launch it was.
TAG_EPOCH = "reconciler:epoch"
# On a service's data volume (DESIGN §8): the service it belongs to, as env/service.
TAG_VOLUME = "reconciler:volume"

_SLOT_IN_NAME = re.compile(r"-g([1-9][0-9]{0,8})-([1-9][0-9]{0,5})$")


@dataclass(frozen=True)
class LaunchRequest:
    name: str
    image: str
    size: str
    tags: Mapping[str, str]
    op: str  # ledger operation id; also the idempotency token's source
    user_data: str | None = field(default=None, repr=False)  # may hold secrets: never printed
    zone: str | None = None  # launch there (beside the service's volume); None: any


@dataclass(frozen=True)
class VolumeRequest:
    size: int  # GiB
    zone: str
    tags: Mapping[str, str]
    op: str  # ledger operation id: the idempotency token's source
    type: str | None = None


def volume_tags(*, owner: str, env: str, service: str, op: str) -> dict[str, str]:
    """A volume's identity: DESIGN §3's owner, env and service, plus `reconciler:volume`."""
    return {
        TAG_OWNER: owner,
        TAG_ENV: env,
        TAG_SERVICE: service,
        TAG_VOLUME: f"{env}/{service}",
        TAG_OP: op,
        TAG_NAME: f"{env}-{service}-data",
    }


def instance_name(env: str, service: str, generation: int, slot: int) -> str:
    return f"{env}-{service}-g{generation}-{slot}"


def ownership_tags(
    *, owner: str, env: str, service: str, generation: int, fingerprint: str, op: str, slot: int
) -> dict[str, str]:
    return {
        TAG_OWNER: owner,
        TAG_ENV: env,
        TAG_SERVICE: service,
        TAG_GENERATION: str(generation),
        TAG_SPEC: fingerprint,
        TAG_OP: op,
        TAG_NAME: instance_name(env, service, generation, slot),
    }


def slot_from_name(name: str | None) -> int | None:
    match = _SLOT_IN_NAME.search(name or "")
    return int(match.group(2)) if match else None


def generation_from_tags(tags: Mapping[str, str]) -> int | None:
    """The generation tag as a number, if it is one we could have written."""
    text = tags.get(TAG_GENERATION, "")
    return int(text) if GENERATION_TAG.fullmatch(text) else None


def identity_problem(tags: Mapping[str, str]) -> str | None:
    """Why an owned instance's identity tags cannot be read, or None when they can (all
    three well formed) or are all absent (an owned instance of nothing: pruned).

    Only what we could have written is read: a `-1`, `03`, `٣` or 20-digit generation,
    or an env or service no desired state can name, is not adopted as anything."""
    present = [t for t in (TAG_ENV, TAG_SERVICE, TAG_GENERATION) if t in tags]
    if not present:
        return None
    missing = [t for t in (TAG_ENV, TAG_SERVICE, TAG_GENERATION) if t not in tags]
    if missing:
        return f"{', '.join(missing)} missing beside {', '.join(present)}"
    for tag in (TAG_ENV, TAG_SERVICE):
        if not IDENTITY_NAME.fullmatch(tags[tag]):
            return f"{tag} is not a name the desired state can hold"
    if generation_from_tags(tags) is None:
        return f"{TAG_GENERATION} is not a generation number (1 to 999999999)"
    return None


def instance_from_tags(
    tags: Mapping[str, str],
    *,
    id: str,
    provider: str,
    state: InstanceState,
    image: str,
    size: str,
    private_ip: str | None = None,
    public_ip: str | None = None,
    launched_at: datetime | None = None,
    zone: str | None = None,
) -> ObservedInstance:
    """An observed instance whose identity (env, service, generation, slot, spec, op,
    name) is read from our tags, already in their DESIGN §3 names (adapters reverse any
    mapping first): every adapter reads them the same way. Tags that cannot be read
    leave the identity empty and say why in `unreadable`."""
    problem = identity_problem(tags)
    if problem is not None:
        return ObservedInstance(
            id=id, provider=provider, state=state, image=image, size=size,
            op=tags.get(TAG_OP), name=tags.get(TAG_NAME), private_ip=private_ip,
            public_ip=public_ip, launched_at=launched_at, tags=dict(tags), unreadable=problem,
            zone=zone,
        )  # fmt: skip
    return ObservedInstance(
        id=id,
        provider=provider,
        state=state,
        image=image,
        size=size,
        env=tags.get(TAG_ENV),
        service=tags.get(TAG_SERVICE),
        generation=generation_from_tags(tags),
        slot=slot_from_name(tags.get(TAG_NAME)),
        fingerprint=tags.get(TAG_SPEC),
        op=tags.get(TAG_OP),
        name=tags.get(TAG_NAME),
        private_ip=private_ip,
        public_ip=public_ip,
        launched_at=launched_at,
        tags=dict(tags),
        zone=zone,
    )


def launched_instance(
    request: LaunchRequest,
    *,
    provider: str,
    id: str,
    image: str,
    size: str,
    private_ip: str | None = None,
    public_ip: str | None = None,
    zone: str | None = None,
) -> ObservedInstance:
    """What a create just made, as the next listing will show it: identity from the
    request's tags, image and size as the cloud reported them (the tamper check compares
    later listings with these)."""
    return instance_from_tags(
        {**request.tags, TAG_NAME: request.name, TAG_OP: request.op},
        id=id,
        provider=provider,
        state=InstanceState.PENDING,
        image=image,
        size=size,
        private_ip=private_ip,
        public_ip=public_ip,
        zone=zone,
    )


class ComputeProvider(Protocol):
    """One (provider profile, region): list what we own, create, destroy, price."""

    name: str

    def list_owned(self, owner: str) -> Sequence[ObservedInstance]:
        """Every instance tagged with `owner`, all pages; raises ObservationIncomplete."""
        ...

    def look_up(self, owner: str, ids: Collection[str]) -> Sequence[ObservedInstance]:
        """The instances among `ids` tagged with `owner`, as the cloud shows them now (one
        it does not show yet is missing, not an error): a boot wait asks for its few new
        instances, not the fleet. Never more requests than `list_owned`; an adapter that
        cannot ask for ids lists what it owns and picks. Raises ObservationIncomplete."""
        ...

    def find_by_op(self, owner: str, op: str) -> ObservedInstance | None:
        """The instance a create operation made, if the cloud has it (lost responses)."""
        ...

    def load_balancers(self) -> LoadBalancerPort | None:
        """The `libcloud-lb` traffic switch's port to this cloud's load balancers, or
        None where the adapter has none (a capability declared here, not probed)."""
        ...

    def create_instance(self, request: LaunchRequest) -> ObservedInstance:
        """Launch one instance with every tag set in the same call."""
        ...

    def volumes(self) -> VolumePort | None:
        """Data volumes and instance stop/start (a service's `volume:`), or None where
        the adapter cannot hand a volume over (declared, as `drivers.volumes` says)."""
        ...

    def destroy_instance(self, instance_id: str) -> None:
        """Terminate; an instance that is already gone counts as destroyed."""
        ...

    def known_sizes(self) -> frozenset[str] | None:
        """The sizes this provider offers (None: it cannot tell). Checked before planning,
        so a size the cloud does not have fails the plan, never the apply."""
        ...

    def price_per_hour(self, size: str) -> float | None:
        """The on-demand price for `size` in this provider's region, if known."""
        ...

    def size_warning(self, size: str) -> str | None:
        """Why `size`, though still offered, should be moved off (deprecated), if so."""
        ...

    def user_data_of(self, instance_id: str) -> str | None:
        """The user data an instance was launched with (rolling rollbacks relaunch it)."""
        ...

    def list_unowned(self, owner: str) -> Sequence[ObservedInstance]:
        """Every instance without the `owner` tag, all pages: reported, never touched."""
        ...


def among(instances: Sequence[ObservedInstance], ids: Collection[str]) -> list[ObservedInstance]:
    """`look_up` for an adapter whose cloud cannot be asked for ids: pick from its listing."""
    wanted = set(ids)
    return [i for i in instances if i.id in wanted]


class VolumePort(Protocol):
    """What handing a data volume from one instance to another needs from the cloud.
    Every call is idempotent: asking for the state a volume or instance is already in
    changes nothing (the hand-over is planned again from what the cloud shows)."""

    def list_owned(self, owner: str) -> Sequence[ObservedVolume]:
        """Every volume tagged with `owner`, all pages; raises ObservationIncomplete."""
        ...

    def describe(self, volume_id: str) -> ObservedVolume | None: ...

    def create(self, request: VolumeRequest) -> ObservedVolume:
        """Create with every tag in the same call (a retry of the same op makes none)."""
        ...

    def attach(self, volume_id: str, instance_id: str, device: str) -> None: ...

    def detach(self, volume_id: str, instance_id: str) -> None:
        """Detach from `instance_id` (named: never from whatever holds it now)."""
        ...

    def snapshot(self, volume_id: str, tags: Mapping[str, str]) -> str: ...

    def snapshots(self, volume_id: str) -> Sequence[tuple[str, Mapping[str, str]]]:
        """The snapshots of `volume_id` (id, tags): a redone step finds its own."""
        ...

    def stop_instance(self, instance_id: str) -> None: ...

    def start_instance(self, instance_id: str) -> None: ...

    def instance_state(self, instance_id: str) -> str | None:
        """The cloud's word for the instance's state (running, stopped, ...), None: gone."""
        ...

    def delete(self, volume_id: str) -> None: ...

    def price_per_gib_month(self, volume_type: str | None) -> float | None:
        """The list price of a GiB-month of this type (None: the cloud's default type)."""
        ...

    def snapshot_price_per_gib_month(self) -> float | None: ...


class LoadBalancerPort(Protocol):
    """What the `libcloud-lb` switch needs from the provider adapter."""

    def members(self, balancer: str) -> set[str]: ...

    def attach(self, balancer: str, instance_ids: Sequence[str]) -> None: ...

    def detach(self, balancer: str, instance_ids: Sequence[str]) -> None: ...

    def in_service(self, balancer: str) -> set[str]: ...


def instance_price(
    spec_price: float | None, provider: ComputeProvider | None, size: str
) -> float | None:
    """The hourly price an instance is recorded at, the one rule for launches, adoptions,
    recovery, rebuild and plan costs: the desired state's `price_per_hour` when it sets
    one, else the provider's price for the size; None when neither knows."""
    if spec_price is not None:
        return spec_price
    return provider.price_per_hour(size) if provider is not None else None
