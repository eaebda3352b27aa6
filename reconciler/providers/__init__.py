"""Provider adapters: the only code that talks to clouds (through libcloud)."""

from reconciler.providers.base import ComputeProvider, LaunchRequest, ownership_tags
from reconciler.providers.registry import build_provider

__all__ = ["ComputeProvider", "LaunchRequest", "build_provider", "ownership_tags"]
