"""libcloud's Azure ARM connection, adjusted for the Azure adapter.

Owns: where requests go (`endpoint:` points both the login and the management API
at one base URL), the client-credentials login (its errors reduced to Azure AD's
AADSTS code: the rest of the answer is about our credentials), reporting every
request (the login's included) and turning off libcloud's own retries. Must not:
translate errors or retry (the adapter, `azure.py`, does both).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from libcloud.common.azure_arm import (
    AzureAuthJsonResponse,
    AzureResourceManagementConnection,
    publicEnvironments,
)
from libcloud.common.base import ConnectionUserAndKey
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, MalformedResponseError
from libcloud.compute.drivers.azure_arm import AzureNodeDriver

from reconciler.providers.endpoints import parse_endpoint


class _Connection(AzureResourceManagementConnection):
    """libcloud's ARM connection with three changes: login and management requests go
    where `endpoints` say (upstream always uses port 443 for login and ignores `secure`),
    every request is reported to `on_request`, and libcloud never retries on its own."""

    def __init__(
        self,
        *args: Any,
        endpoints: tuple[str, str] | None = None,
        on_request: Callable[[str, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        environment = dict(publicEnvironments["default"])
        if endpoints is not None:
            environment["resourceManagerEndpointUrl"] = endpoints[0]
            environment["activeDirectoryEndpointUrl"] = endpoints[1]
        kwargs["cloud_environment"] = environment
        self.on_request = on_request
        super().__init__(*args, **kwargs)
        self.host, self.port, secure = parse_endpoint(environment["resourceManagerEndpointUrl"])
        self.secure = 1 if secure else 0
        self._login = parse_endpoint(environment["activeDirectoryEndpointUrl"])

    def get_token_from_credentials(self) -> None:
        if self.on_request is not None:
            self.on_request("POST", "token")
        host, port, secure = self._login
        conn = self.conn_class(host, port, secure=secure, timeout=self.timeout)
        conn.connect()
        form = urlencode({"grant_type": "client_credentials", "client_id": self.user_id,
                          "client_secret": self.key, "resource": self.login_resource})  # fmt: skip
        headers = {"Content-type": "application/x-www-form-urlencoded"}
        conn.request("POST", f"/{self.tenant_id}/oauth2/token", form, headers)
        try:
            answer: Any = AzureAuthJsonResponse(conn.getresponse(), conn).object
            self.access_token = answer["access_token"]
            self.expires_on = int(answer["expires_on"])
        except BaseHTTPError as exc:
            if exc.code in (400, 401, 403):
                # The message is Azure AD's; only its AADSTS code is kept.
                code = re.search(r"AADSTS\d+", str(exc.message))
                raise InvalidCredsError(code.group(0) if code else f"HTTP {exc.code}") from None
            raise
        except (KeyError, TypeError, ValueError):
            raise MalformedResponseError("login answer holds no token") from None

    def request(
        self,
        action: str,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        method: str = "GET",
        raw: bool = False,
        stream: bool = False,
        json: Any = None,
        retry_failed: Any = None,
    ) -> Any:
        if self.on_request is not None:
            self.on_request(method, action)
        if time.time() + 300 >= int(self.expires_on):  # as upstream: renew 5 minutes early
            self.get_token_from_credentials()
        # Retries happen only in `ProviderCalls.call`, bounded and logged.
        return ConnectionUserAndKey.request(
            self, action, params=params, data=data, headers=headers, method=method, raw=raw,
            stream=stream, json=json, retry_failed=False,
        )  # fmt: skip


class AzureDriver(AzureNodeDriver):
    """libcloud's ARM driver on `_Connection`, reading VMs without extra requests."""

    connectionCls = _Connection

    def __init__(
        self,
        *args: Any,
        endpoints: tuple[str, str] | None,
        on_request: Callable[[str, str], None] | None,
        **kwargs: Any,
    ) -> None:
        self._endpoints = endpoints
        self._on_request = on_request
        super().__init__(*args, **kwargs)

    def _ex_connection_class_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = super()._ex_connection_class_kwargs()
        kwargs.update(endpoints=self._endpoints, on_request=self._on_request)
        return kwargs

    def _to_node(self, data: Any, fetch_nic: bool = False, fetch_power_state: bool = False) -> Any:
        # Upstream fetches each VM's NIC and instance view: 1 + 3 requests per VM.
        return super()._to_node(data, fetch_nic=fetch_nic, fetch_power_state=fetch_power_state)
