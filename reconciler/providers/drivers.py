"""What each driver family needs and can do, known without importing libcloud.

Owns: the table validation reads to judge a provider profile (its settings and
credentials) and the capabilities a desired state may ask of it (prices, a load
balancer). Must not: import libcloud or an adapter (validation runs before any
driver is loaded, and must never contact a cloud).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


@dataclass(frozen=True)
class DriverSpec:
    name: str
    cloud: str  # for messages: "Amazon EC2", "Google Compute Engine", ...
    credentials: tuple[str, ...]  # required credential names (references only)
    settings: tuple[str, ...] = ()  # required driver settings (plain strings)
    optional_settings: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # optional boolean settings
    region_meaning: str = "region"  # what `region:` names for this cloud
    region_required: bool = True
    default_region: str | None = None
    # libcloud carries prices for this driver; without them `price_per_hour` is required.
    prices: bool = True
    # A `libcloud-lb` traffic switch exists for this driver (classic ELB for EC2).
    load_balancer: bool = False
    setting_hints: dict[str, str] = field(default_factory=dict)

    @property
    def all_settings(self) -> tuple[str, ...]:
        return (*self.settings, *self.optional_settings, *self.flags)


DRIVER_SPECS: Final[dict[str, DriverSpec]] = {
    spec.name: spec
    for spec in (
        DriverSpec(
            name="ec2",
            cloud="Amazon EC2",
            credentials=("key", "secret"),
            load_balancer=True,
        ),
        DriverSpec(
            name="sandbox",
            cloud="the built-in sandbox (EC2 API)",
            credentials=(),
            region_required=False,
            default_region="us-east-1",
            load_balancer=True,
        ),
        DriverSpec(
            name="gce",
            cloud="Google Compute Engine",
            # key: the service account's e-mail; secret: its private key (PEM).
            credentials=("key", "secret"),
            settings=("project",),
            region_meaning="zone",
            setting_hints={"project": "the Google Cloud project id"},
        ),
        DriverSpec(
            name="azure",
            cloud="Microsoft Azure",
            # key: the application (client) id; secret: its client secret.
            credentials=("key", "secret"),
            settings=("tenant", "subscription", "resource_group", "network", "subnet"),
            optional_settings=("admin_user", "ssh_key"),
            region_meaning="location",
            prices=False,
            setting_hints={
                "tenant": "the Azure AD tenant id",
                "subscription": "the subscription id",
                "resource_group": "the resource group instances live in",
                "network": "the virtual network new NICs join",
                "subnet": "the subnet of that network",
            },
        ),
        DriverSpec(
            name="openstack",
            cloud="OpenStack",
            # key: the user name; secret: the password.
            credentials=("key", "secret"),
            settings=("auth_url", "tenant"),
            optional_settings=("domain", "network"),
            flags=("config_drive",),
            region_required=False,
            default_region="RegionOne",
            prices=False,
            setting_hints={
                "auth_url": "the Keystone URL, e.g. https://keystone.example:5000",
                "tenant": "the project (tenant) name",
            },
        ),
    )
}

DRIVERS: Final = tuple(DRIVER_SPECS)
