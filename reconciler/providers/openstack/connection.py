"""libcloud's OpenStack connections, set up for the OpenStack adapter.

Owns: the driver that authenticates with Keystone v3 and reaches Nova, Glance and
Neutron through the catalog (`endpoint:` replacing the compute endpoint only), each
of its connections reporting every request (Keystone's included) to a listener, and
libcloud's own retries turned off. Must not: translate errors or retry (the adapter,
`openstack.py`, does both: a hidden retry of a create could launch twice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libcloud.common.openstack_identity import OpenStackIdentityEndpointType
from libcloud.common.types import LibcloudError
from libcloud.compute.drivers.openstack import (
    OpenStack_2_Connection,
    OpenStack_2_ImageConnection,
    OpenStack_2_NetworkConnection,
    OpenStack_2_NodeDriver,
)
from libcloud.utils.retry import Retry

from reconciler.providers.openstack.nova import Listener, request_name


class _NoRetry(Retry):
    """libcloud's own retry (LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS) stays off: retries
    happen only in the adapter, where each one is bounded and logged."""

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func


class _Reporting:
    """Mixed into each libcloud connection: reports every request, Keystone's included."""

    retryCls = _NoRetry
    listener: Listener | None = None

    def request(self, action: str, *args: Any, **kwargs: Any) -> Any:
        if self.listener is not None:
            # libcloud passes the method by keyword; positionally it is the fifth.
            method = kwargs.get("method") or (args[3] if len(args) > 3 else "GET")
            self.listener(request_name(str(method), action))
        return super().request(action, *args, **kwargs)  # type: ignore[misc]

    def get_endpoint(self) -> str:
        """The catalog's public endpoint for this connection's service *type* in the
        region. libcloud also demands its own service *name* (`nova`), but Keystone's
        catalog need not name services at all; the name only breaks a tie between two
        services of one type."""
        catalog = self.service_catalog  # type: ignore[attr-defined]
        service_type = self._ex_force_service_type or self.service_type  # type: ignore[attr-defined]
        region = self._ex_force_service_region or self.service_region  # type: ignore[attr-defined]
        name = self._ex_force_service_name or self.service_name  # type: ignore[attr-defined]

        def public(found: list[Any]) -> list[Any]:
            return [
                e for e in found
                if e.endpoint_type == OpenStackIdentityEndpointType.EXTERNAL
                and (not region or e.region == region) and e.url
            ]  # fmt: skip

        candidates = public(catalog.get_endpoints(service_type=service_type))
        if len(candidates) > 1:
            candidates = public(catalog.get_endpoints(service_type=service_type, name=name))
        if len(candidates) != 1:
            found = "none" if not candidates else f"{len(candidates)}"
            raise LibcloudError(
                f"the catalog's public {service_type} endpoints in region {region!r}: "
                f"{found} (one is needed)"
            )
        return str(candidates[0].url)

    def _populate_hosts_and_request_paths(self) -> None:
        if self.listener is not None and not self.get_auth_class().is_token_valid():  # type: ignore[attr-defined]
            self.listener("Authenticate")
        super()._populate_hosts_and_request_paths()  # type: ignore[misc]


class _Compute(_Reporting, OpenStack_2_Connection):
    pass


class _Image(_Reporting, OpenStack_2_ImageConnection):
    pass


class _Network(_Reporting, OpenStack_2_NetworkConnection):
    pass


class NovaDriver(OpenStack_2_NodeDriver):
    connectionCls = _Compute
    image_connectionCls = _Image
    network_connectionCls = _Network


def make_driver(
    user: str,
    password: str,
    *,
    auth_url: str,
    tenant: str,
    domain: str,
    project_domain_id: str,
    region: str,
    endpoint: str | None,
    timeout: float,
    listener: Listener | None,
) -> Any:
    """A libcloud driver that authenticates with Keystone v3 (password) and reaches Nova
    (and Glance, Neutron) through the catalog's public endpoints in `region`;
    `endpoint` replaces the catalog's compute endpoint only."""
    options: dict[str, Any] = {
        "ex_force_auth_url": auth_url,
        "ex_force_auth_version": "3.x_password",
        "ex_tenant_name": tenant,
        "ex_domain_name": domain,  # the user's domain, by name
        "ex_tenant_domain_id": project_domain_id,  # the project's domain, by id
        "ex_force_service_region": region,
        "timeout": timeout,
    }
    if endpoint:
        options["ex_force_base_url"] = endpoint.rstrip("/")
    driver: Any = NovaDriver(user, password, **options)
    if endpoint:
        # libcloud points every service at a forced base URL; images and networks keep
        # the catalog's endpoints, since `endpoint:` names the compute API only.
        for connection in (driver.image_connection, driver.network_connection):
            connection._ex_force_base_url = None
            connection.base_url = None
    for connection in (driver.connection, driver.image_connection, driver.network_connection):
        connection.listener = listener
    return driver
