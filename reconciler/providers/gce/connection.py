"""libcloud's GCE connection, set up for the GCE adapter.

Owns: the OAuth2 service-account token (kept in memory, never in libcloud's token
file under $HOME, and renewed before it expires), pointing token exchange and API at
`endpoint`, and libcloud's own retries turned off. Must not: translate API errors or
retry (the adapter, `gce.py`, does both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlparse

from libcloud.common.base import Connection, ConnectionUserAndKey
from libcloud.common.google import GoogleBaseError, GoogleServiceAcctAuthConnection
from libcloud.common.types import LibcloudError, MalformedResponseError
from libcloud.compute.drivers.gce import GCEConnection, GCENodeDriver, GCEResponse

from reconciler.errors import OutcomeUnknown, ProviderError, TransientError
from reconciler.providers.calls import retry_after_seconds
from reconciler.providers.endpoints import parse_endpoint

_SCOPES: Final = ["https://www.googleapis.com/auth/compute"]
_TOKEN_MARGIN: Final = 60.0  # renew a token this many seconds before GCE says it expires


class MemoryToken:
    """The OAuth2 access token, in memory only and shared by every thread's connection.

    libcloud's own credential object caches tokens in `~/.google_libcloud_auth.<project>`;
    a token is a secret, so this replaces it: one token exchange per process (and per
    expiry, or per refusal), nothing written anywhere. Each token has a serial number,
    so a thread whose request was refused forgets only the token it sent: threads that
    were refused together fetch one new token, not one each."""

    def __init__(self, auth: GoogleServiceAcctAuthConnection, on_fetch: Callable[[], None]) -> None:
        self._auth = auth
        self._on_fetch = on_fetch
        self._lock = threading.Lock()
        self._token: str | None = None
        self._serial = 0
        self._renew_at = 0.0

    def __repr__(self) -> str:
        return "<gce access token>"

    def issue(self) -> tuple[str, int]:
        """(token, serial): the current token, fetched first when there is none or it is
        about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, lifetime = self._fetch()
                self._serial += 1
                self._renew_at = time.monotonic() + max(lifetime - _TOKEN_MARGIN, 0.0)
            return self._token, self._serial

    @property
    def access_token(self) -> str:
        return self.issue()[0]

    def forget(self, serial: int) -> None:
        """Drop token `serial` (refused by the API); a newer one is kept."""
        with self._lock:
            if serial == self._serial:
                self._token = None

    def _fetch(self) -> tuple[str, float]:
        self._on_fetch()
        try:
            info = self._auth.get_new_token()
        except GoogleBaseError as exc:
            # Not echoed: the token endpoint's answer is about our credentials.
            if exc.http_code == 429 or exc.http_code >= 500:
                raise TransientError(f"token endpoint unavailable (HTTP {exc.http_code})") from None
            raise ProviderError(
                f"the token endpoint rejected the service account (HTTP {exc.http_code})"
            ) from None
        except (LibcloudError, MalformedResponseError, ValueError):
            raise OutcomeUnknown("the token endpoint's answer is unreadable") from None
        token = info.get("access_token") if isinstance(info, dict) else None
        if not isinstance(token, str) or not token:
            raise OutcomeUnknown("the token endpoint's answer holds no access token")
        return token, float(info.get("expires_in") or 300)


class _AuthConnection(GoogleServiceAcctAuthConnection):
    """Token exchange without libcloud's hidden retries (the adapter's `ProviderCalls`
    makes them, bounded and logged)."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["retry_failed"] = False
        return super().request(*args, **kwargs)


class _Response(GCEResponse):
    """GCEResponse whose errors keep the wait the API asked for: libcloud raises them
    from `parse_body` without the response headers, where Retry-After is."""

    def parse_body(self) -> Any:
        try:
            return super().parse_body()
        except GoogleBaseError as exc:
            exc.retry_after = retry_after_seconds(self.headers)  # type: ignore[attr-defined]
            raise


class _Connection(GCEConnection):
    """GCEConnection with the token object above and a configurable API root.

    GoogleBaseConnection.__init__ is skipped on purpose: it builds libcloud's
    file-caching credential and fetches a token at construction."""

    responseCls = _Response

    def __init__(
        self,
        user_id: str,
        key: str,
        secure: bool = True,
        host: str | None = None,
        port: int | None = None,
        *,
        token: MemoryToken,
        request_path: str,
        timeout: float | None = None,
        **_ignored: Any,  # retry_delay, backoff, proxy_url: unused
    ) -> None:
        ConnectionUserAndKey.__init__(
            self, user_id, key, secure=secure, host=host, port=port, timeout=timeout
        )
        self.oauth2_credential = token  # type: ignore[assignment]  # same access_token
        self._token = token
        self.request_path = request_path
        # Resources of other projects (public image families) sit beside ours.
        self.api_root = request_path.rsplit("/projects/", 1)[0]
        self.gce_params = None
        self.token_serial = 0  # of the token this connection (one thread) last sent

    def pre_connect_hook(self, params: Any, headers: Any) -> Any:
        token, self.token_serial = self._token.issue()
        headers["Authorization"] = f"Bearer {token}"
        return params, headers

    def morph_action_hook(self, action: str) -> str:
        """`/projects/<p>/...` is a path from the API root; anything else is one under
        our project (libcloud's own rule for everything but full URLs)."""
        if action.startswith("/projects/"):
            return f"{self.api_root}{action}"
        return str(super().morph_action_hook(action))

    def request(
        self,
        action: Any,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        method: Any = "GET",
        raw: Any = False,
        stream: Any = False,
        json: Any = None,
        retry_failed: Any = None,
    ) -> Any:
        # Skips GoogleBaseConnection.request, which resends on ECONNRESET by itself.
        return Connection.request(
            self, action, params=params, data=data, headers=headers, method=method, raw=raw,
            stream=stream, json=json, retry_failed=False,
        )  # fmt: skip


class GceDriver(GCENodeDriver):
    """libcloud's GCE driver on `_Connection`: our token, our API root."""

    connectionCls = _Connection  # type: ignore[assignment]  # built by our own kwargs

    def __init__(
        self, user_id: str, key: str, *, token: MemoryToken, request_path: str, **kwargs: Any
    ) -> None:
        self._connection_kwargs = {"token": token, "request_path": request_path}
        super().__init__(user_id, key, **kwargs)  # no datacenter: no request is made

    def _ex_connection_class_kwargs(self) -> dict[str, Any]:
        return dict(self._connection_kwargs)


def endpoint_parts(endpoint: str | None) -> tuple[dict[str, Any], str]:
    """(host/port/secure options, path prefix) for `endpoint`, or the defaults."""
    if not endpoint:
        return {}, ""
    host, port, secure = parse_endpoint(endpoint)
    options = {"host": host, "port": port, "secure": secure}
    return options, urlparse(endpoint).path.rstrip("/")


def new_token(
    email: str, key: str, *, path: str, options: dict[str, Any], on_fetch: Callable[[], None]
) -> MemoryToken:
    """The service account's token, fetched from `<path>/o/oauth2/token` when first
    needed (`options`: host, port, secure, timeout, as for the driver)."""
    auth = _AuthConnection(email, key, _SCOPES, **options)
    auth.request_path = path
    return MemoryToken(auth, on_fetch)
