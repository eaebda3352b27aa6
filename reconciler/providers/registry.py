"""Builds a `ComputeProvider` from a provider profile: the driver registry.

Owns: mapping `driver:` names to adapters and resolving their credentials.
Must not: cache secrets beyond the adapter object it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from reconciler.errors import ConfigurationError
from reconciler.model import ProviderProfile
from reconciler.providers.base import ComputeProvider
from reconciler.providers.credentials import resolve_secret
from reconciler.providers.hostpolicy import check_endpoint

if TYPE_CHECKING:
    from reconciler.providers.ec2.adapter import Ec2Provider


def build_provider(
    profile: ProviderProfile,
    *,
    on_call: Callable[[str, str], None] | None = None,
    agent: str | None = None,
) -> ComputeProvider:
    """The adapter for `profile`; `on_call(provider, action)` hears every API request;
    `agent` is added to the User-Agent where the adapter can (EC2 and the sandbox)."""
    if profile.driver == "sandbox":
        from reconciler.providers.ec2.adapter import Ec2Provider
        from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET, in_process_endpoint

        endpoint = profile.endpoint or in_process_endpoint()
        return _with_load_balancers(
            Ec2Provider(
                profile.name,
                key=SANDBOX_KEY,
                secret=SANDBOX_SECRET,
                region=profile.region or "us-east-1",
                endpoint=endpoint,
                on_call=on_call,
                timeout=profile.timeout,
                agent=agent,
            ),
            key=SANDBOX_KEY,
            secret=SANDBOX_SECRET,
            endpoint=endpoint,
        )
    # Before any credential is read: where may this profile send it?
    if profile.endpoint:
        check_endpoint(profile.endpoint, where=f"providers.{profile.name}.endpoint")
    if profile.options.get("auth_url"):
        check_endpoint(str(profile.options["auth_url"]), where=f"providers.{profile.name}.auth_url")
    if profile.driver == "ec2":
        from reconciler.providers.ec2.adapter import Ec2Provider

        try:
            key_ref, secret_ref = profile.credentials["key"], profile.credentials["secret"]
        except KeyError as exc:
            raise ConfigurationError(
                f"provider {profile.name}: credentials.{exc.args[0]} is required for ec2"
            ) from None
        key, secret = resolve_secret(key_ref), resolve_secret(secret_ref)
        return _with_load_balancers(
            Ec2Provider(
                profile.name,
                key=key,
                secret=secret,
                region=profile.region or "us-east-1",
                endpoint=profile.endpoint,
                on_call=on_call,
                timeout=profile.timeout,
                agent=agent,
            ),
            key=key,
            secret=secret,
            endpoint=profile.endpoint,
        )
    # Imported when used: an operator on one cloud never loads the others' drivers.
    # Each module's build() resolves its own credentials.
    if profile.driver == "gce":
        from reconciler.providers.gce import adapter as gce

        return gce.build(profile, on_call=on_call)
    if profile.driver == "azure":
        from reconciler.providers.azure import adapter as azure

        return azure.build(profile, on_call=on_call)
    if profile.driver == "openstack":
        from reconciler.providers.openstack import adapter as openstack

        return openstack.build(profile, on_call=on_call)
    raise ConfigurationError(f"provider {profile.name}: no adapter for driver {profile.driver!r}")


def _with_load_balancers(
    provider: Ec2Provider, *, key: str, secret: str, endpoint: str | None
) -> Ec2Provider:
    """Give an EC2 provider its classic-ELB port, built only when a service uses one."""
    from reconciler.providers.ec2.elb import ElbBalancers

    provider.lb_factory = partial(
        ElbBalancers, key=key, secret=secret, region=provider.region, endpoint=endpoint
    )
    return provider
