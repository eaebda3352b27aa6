"""Builds a `ComputeProvider` from a provider profile: the driver registry.

Owns: mapping `driver:` names to adapters and resolving their credentials.
Must not: cache secrets beyond the adapter object it returns.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.errors import ConfigurationError
from reconciler.model import ProviderProfile
from reconciler.providers.base import ComputeProvider
from reconciler.providers.credentials import resolve_secret


def build_provider(
    profile: ProviderProfile, *, on_call: Callable[[str, str], None] | None = None
) -> ComputeProvider:
    """The adapter for `profile`; `on_call(provider, action)` hears every API request."""
    if profile.driver == "sandbox":
        from reconciler.providers.ec2 import Ec2Provider
        from reconciler.sandbox import SANDBOX_KEY, SANDBOX_SECRET, in_process_endpoint

        endpoint = profile.endpoint or in_process_endpoint()
        return Ec2Provider(
            profile.name,
            key=SANDBOX_KEY,
            secret=SANDBOX_SECRET,
            region=profile.region or "us-east-1",
            endpoint=endpoint,
            on_call=on_call,
        )
    if profile.driver == "ec2":
        from reconciler.providers.ec2 import Ec2Provider

        try:
            key_ref, secret_ref = profile.credentials["key"], profile.credentials["secret"]
        except KeyError as exc:
            raise ConfigurationError(
                f"provider {profile.name}: credentials.{exc.args[0]} is required for ec2"
            ) from None
        return Ec2Provider(
            profile.name,
            key=resolve_secret(key_ref),
            secret=resolve_secret(secret_ref),
            region=profile.region or "us-east-1",
            endpoint=profile.endpoint,
            on_call=on_call,
        )
    raise ConfigurationError(f"provider {profile.name}: no adapter for driver {profile.driver!r}")
