"""What each driver family needs and can do, known without importing libcloud.

Owns: the table validation reads to judge a provider profile (its settings and
credentials) and the capabilities a desired state may ask of it (prices, a load
balancer). Must not: import libcloud or an adapter (validation runs before any
driver is loaded, and must never contact a cloud).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from reconciler.providers.gce import labels as gce_labels


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
    # The adapter can read an instance's user data back: a rolling update's rollback
    # relaunches replaced instances with theirs (user data is never stored).
    reads_user_data: bool = True
    # The adapter can create, attach, detach and snapshot data volumes, and stop and
    # start instances: a service's `volume:` is handed from one generation to the next.
    volumes: bool = False
    # Why this cloud would refuse the owner as a tag value (None: it would not): asked
    # by validation, so no listing or launch fails on it. (User data is capped at 16 KiB
    # for every driver, below each cloud's own limit.)
    owner_problem: Callable[[str], str | None] | None = None
    setting_hints: dict[str, str] = field(default_factory=dict)
    # Settings that take one of a few words (validation names them when another is given).
    setting_choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
            volumes=True,
        ),
        DriverSpec(
            name="sandbox",
            cloud="the built-in sandbox (EC2 API)",
            credentials=(),
            region_required=False,
            default_region="us-east-1",
            load_balancer=True,
            volumes=True,
        ),
        DriverSpec(
            name="gce",
            cloud="Google Compute Engine",
            # key: the service account's e-mail; secret: its private key (PEM, or the
            # whole JSON key file, from which libcloud takes `private_key`).
            credentials=("key", "secret"),
            settings=("project",),
            optional_settings=("network", "subnetwork", "user_data_key"),
            flags=("external_ip",),  # default true: an ephemeral public address
            region_meaning="zone",
            # libcloud prices predefined types of the c2/e2/f1/g1/m1/n1/n2/n2d families;
            # others cost nothing in the ledger unless price_per_hour is set.
            owner_problem=gce_labels.owner_problem,
            setting_hints={
                "project": "the Google Cloud project id",
                "network": "the VPC network of new instances (default: default)",
                "subnetwork": "the subnetwork in the zone's region (custom-mode networks)",
                "user_data_key": "the metadata key of the user data: startup-script (run by "
                "GCE's guest agent, the default) or user-data (read by cloud-init)",
            },
            setting_choices={"user_data_key": gce_labels.USER_DATA_KEYS},
        ),
        DriverSpec(
            name="azure",
            cloud="Microsoft Azure",
            # key: the application (client) id; secret: its client secret.
            credentials=("key", "secret"),
            # Linux VMs need a login method: an SSH public key (password login stays off).
            settings=("tenant", "subscription", "resource_group", "network", "subnet", "ssh_key"),
            optional_settings=("admin_user",),  # default: azureuser
            region_meaning="location",
            # libcloud's azure_linux data: per size and location (pay-as-you-go, Linux).
            prices=True,
            setting_hints={
                "tenant": "the Azure AD tenant id",
                "subscription": "the subscription id",
                "resource_group": "the resource group instances live in",
                "network": "the virtual network new NICs join",
                "subnet": "the subnet of that network",
                "ssh_key": "the admin user's OpenSSH public key, as text",
            },
        ),
        DriverSpec(
            name="openstack",
            cloud="OpenStack",
            # key: the user name; secret: the password (Keystone v3 password auth).
            credentials=("key", "secret"),
            settings=("auth_url", "tenant"),
            # domain: the user's domain name (default "Default"); project_domain_id: the
            # project's domain id (default "default"); network: a Neutron network id or
            # name, needed where the project has several networks.
            optional_settings=("domain", "project_domain_id", "network"),
            flags=("config_drive",),
            region_required=False,
            default_region="RegionOne",
            prices=False,
            # Nova shows user data to admins only (microversion 2.3, default policy).
            reads_user_data=False,
            setting_hints={
                "auth_url": "the Keystone URL, e.g. https://keystone.example:5000",
                "tenant": "the project (tenant) name",
            },
        ),
    )
}

DRIVERS: Final = tuple(DRIVER_SPECS)
