"""A fake OpenStack on loopback: Keystone v3, Nova v2.1, Glance v2 and a little Neutron.

One server plays every service: Keystone (`<base>/identity`) issues a token whose
catalog points compute, image and network back at it (`<base>/compute/v2.1`, ...),
so the real libcloud driver authenticates and then follows the catalog as it would
against a real cloud. State: the servers created (kept in creation order), a fixed
flavor table, three images (two share a name, as re-uploads do). Listings are paged
the way Nova pages them: at most `max_limit` servers per page (2 here, Nova's
`osapi_max_limit` made small); a full page gets a `servers_links` rel=next that
repeats the request's own query (its `limit` included, as Nova does) with the page's
last id as marker, on the host Nova believes it has (not the one the client used).
A marker may name a deleted server (Nova reads deleted rows for it); a marker that
never existed, or a limit that is not a whole number, is a 400.

Deleting is not instant, as in Nova: a deleted server stays listed with task_state
"deleting" (or, with `soft_delete`, as SOFT_DELETED: reclaim_instance_interval set)
for `delete_lingers` more listings (counted at each first page), then is gone (404);
a DELETE of a server already being deleted is accepted and changes nothing.

Faults: `throttle(n)` answers the next n compute requests with `throttle_status`
(429 or Nova's historic 413 overLimit) and a Retry-After; `partial_listing` makes
every page after the first fail the way Nova does when the marker server vanished
between pages (400 "marker not found"); `repeat_next_link` hands out the same next
link again; `fail_later_pages` answers later pages with a 503;
`create_fails_after_commit` makes the server and then answers 500 (a lost answer);
`quota_status` refuses creates the way Nova refuses them over quota (403, or 413
without Retry-After from the legacy v2 API); `FakeServer.self_link = False` lists a
server without its rel=self link, an answer libcloud cannot parse; `mangle[path]`
rewrites the JSON of a 200 answer for that path (a malformed answer of other kinds).
Servers boot (BUILD -> ACTIVE) by the time a listing shows them, unless `boots` is off.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from tests.support.desired_builder import write_desired
from tests.support.fakecloud import FakeCloud, Request, Response, serving

USER = "deployer"
PASSWORD = "canary-Pa55w0rd-7f3e9b21"  # the canary: must never show in output or ledger
PROJECT = "web-team"
PROJECT_ID = "8f2f6c0e5b3d4a1c9e7b6a5d4c3b2a10"
NETWORK_ID = "3a8c1f5e-2b7d-4e9a-8c6f-1d2e3f4a5b6c"
IMAGE_V1 = "b1f6a0c2-0d8e-4c1e-9a3b-2f4e6a8c0d11"  # ubuntu-22.04 (older upload)
IMAGE_V1_NEWER = "c2a7b1d3-1e9f-4d2a-8b4c-3a5f7b9d1e22"  # ubuntu-22.04 (newer upload)
IMAGE_V2 = "d3b8c2e4-2fa0-4e3b-9c5d-4b6a8c0e2f33"  # ubuntu-24.04
_IMAGES = (
    (IMAGE_V1, "ubuntu-22.04", "2024-01-10T08:00:00Z"),
    (IMAGE_V1_NEWER, "ubuntu-22.04", "2024-03-02T08:00:00Z"),
    (IMAGE_V2, "ubuntu-24.04", "2024-05-01T08:00:00Z"),
)
_METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")  # Nova's schema for metadata keys
_USER_DATA_MAX = 65535  # bytes of base64, Nova's limit
_NOVA_SELF_URL = "http://nova-api.internal.invalid:8774/v2.1"  # where Nova thinks it is
_VM_STATES = {"BUILD": "building", "ACTIVE": "active", "SOFT_DELETED": "soft-delete"}


@dataclass
class FakeServer:
    id: str
    name: str
    image_id: str
    flavor_id: str
    metadata: dict[str, str]
    created: str
    private_ip: str
    status: str = "BUILD"
    task_state: str | None = "spawning"
    user_data: str | None = None  # base64, as sent
    config_drive: bool = False
    networks: list[str] = field(default_factory=list)
    self_link: bool = True  # False: listed without its rel=self link (malformed)
    lingers: int | None = None  # deleted: listings it still shows in (None: not deleted)
    purged: bool = False  # deleted and no longer shown; still found as a marker

    @property
    def deleting(self) -> bool:
        return self.lingers is not None


class FakeOpenStack(FakeCloud):
    fixture_dir = "openstack"
    auth_paths = ("/identity/v3/auth/tokens",)  # a token POST changes nothing in the cloud
    max_limit = 2  # Nova's osapi_max_limit, small so that every listing pages

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[str, FakeServer] = {}  # insertion order = creation order
        self.tokens: set[str] = set()
        self.throttle_status = 429
        self.catalog_without_names = False
        self.max_microversion = (2, 96)  # what this Nova offers
        self.down_cell_servers: list[str] = []  # ids in a cell the API cannot reach
        self.second_compute_named: str | None = None
        self.repeat_next_link = False
        self.fail_later_pages = False
        self.boots = True  # a BUILD server is ACTIVE by the time a listing shows it
        self.create_fails_after_commit = 0  # next n creates: server made, 500 answered
        self.quota_status: int | None = None  # creates refused over quota (403 or 413)
        self.delete_lingers = 1  # listings a deleted server still shows in
        self.soft_delete = False  # deleted servers show as SOFT_DELETED, not "deleting"
        self.mangle: dict[str, Callable[[Any], Any]] = {}  # path -> rewrite of a 200's JSON
        self.auth_bodies: list[Any] = []
        self._created = 0

    # -- what tests use ------------------------------------------------------
    @property
    def compute(self) -> str:
        return f"{self.base_url}/compute/v2.1"

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity"

    def live(self) -> list[FakeServer]:
        """The servers not deleted (nor being deleted)."""
        return [s for s in self.servers.values() if not s.deleting]

    def deleting(self) -> list[FakeServer]:
        """The deleted servers a listing still shows."""
        return [s for s in self.servers.values() if s.deleting and not s.purged]

    # -- routing ---------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        response = self._route(request)
        rewrite = self.mangle.get(request.path)
        if rewrite is not None and response.status == 200:
            return Response.of_json(rewrite(json.loads(response.body)))
        return response

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/identity/v3/auth/tokens" and request.method == "POST":
            return self._issue_token(request)
        if request.headers.get("x-auth-token") not in self.tokens:
            return self._fault(
                "unauthorized", 401, message="The request you have made requires authentication."
            )
        if path.startswith("/compute/v2.1/"):
            if self.throttled():
                return self._throttle_answer()
            return self._compute(request, path.removeprefix("/compute/v2.1"))
        if path == "/image/v2/images" and request.method == "GET":
            return self._images(request)
        if path == "/network/v2.0/networks" and request.method == "GET":
            return self._networks(request)
        return self._fault("itemNotFound", 404, message=f"no route for {request.method} {path}")

    def _compute(self, request: Request, path: str) -> Response:
        method = request.method
        if path == "/servers/detail" and method == "GET":
            return self._list_servers(request)
        if path == "/servers" and method == "POST":
            return self._create_server(request)
        if path == "/flavors/detail" and method == "GET":
            return Response.of_json(self.fixture("flavors.json", compute=self.compute))
        match = re.fullmatch(r"/servers/([^/]+)", path)
        if match:
            server = self.servers.get(match.group(1))
            if server is None or server.purged:
                return self._fault("itemNotFound", 404, message="Instance could not be found.")
            if method == "GET":
                return Response.of_json({"server": self._render(server, request)})
            if method == "DELETE":
                self._delete(server)
                return Response(status=204, body=b"", headers={})
        return self._fault("itemNotFound", 404, message=f"no route for {method} {path}")

    def _delete(self, server: FakeServer) -> None:
        with self.lock:
            if server.deleting:  # Nova: "already in deleting state, ignoring this request"
                return
            server.lingers = self.delete_lingers
            if self.soft_delete:
                server.status, server.task_state = "SOFT_DELETED", None
            else:
                server.task_state = "deleting"  # the status stays what it was

    # -- Keystone ----------------------------------------------------------------
    def _issue_token(self, request: Request) -> Response:
        body = request.json()
        with self.lock:
            self.auth_bodies.append(body)
        identity = body["auth"]["identity"]["password"]["user"]
        if (identity.get("name"), identity.get("password")) != (USER, PASSWORD):
            return self._fault(
                "error", 401, message="The request you have made requires authentication."
            )
        if body["auth"]["scope"]["project"]["name"] != PROJECT:
            return self._fault(
                "error", 401, message="The request you have made requires authentication."
            )
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens.add(token)
        now = datetime.now(UTC)
        payload = self.fixture(
            "token.json",
            base=self.base_url,
            user=USER,
            project=PROJECT,
            project_id=PROJECT_ID,
            issued_at=now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            expires_at=(now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        )
        if self.catalog_without_names:  # Keystone allows it; libcloud's recorded v3 token
            for entry in payload["token"]["catalog"]:
                entry.pop("name", None)
        if self.second_compute_named:  # another compute service beside Nova
            extra = dict(payload["token"]["catalog"][0], name=self.second_compute_named)
            extra["endpoints"] = [dict(e, url=e["url"].replace("/compute/", "/other/"))
                                  for e in extra["endpoints"]]  # fmt: skip
            payload["token"]["catalog"].append(extra)
        return Response.of_json(payload, status=201, **{"X-Subject-Token": token})

    # -- Nova ----------------------------------------------------------------------
    def _list_servers(self, request: Request) -> Response:
        asked = _microversion(request)
        if asked > self.max_microversion:
            return self._fault(
                "notAcceptable", 406,
                message=f"Version {asked[0]}.{asked[1]} is not supported by the API.",
            )  # fmt: skip
        query = {k: v[0] for k, v in request.query.items()}
        if not query.get("limit", "1000").isdigit():
            return self._fault(
                "badRequest", 400, message="Invalid input for query parameters limit."
            )
        limit = min(int(query.get("limit", "1000")), self.max_limit)
        marker = query.get("marker")
        with self.lock:
            if marker is None:  # a new listing: deleted servers fade one listing at a time
                for server in self.servers.values():
                    if server.lingers is not None and not server.purged:
                        server.purged = server.lingers <= 0
                        server.lingers -= 1
            servers = list(self.servers.values())
            ids = [s.id for s in servers]
            if marker is not None:
                if self.partial_listing or marker not in ids:
                    return self._fault("badRequest", 400, message=f"marker [{marker}] not found")
                if self.fail_later_pages:
                    return self._fault("computeFault", 503, message="Service Unavailable")
                servers = servers[ids.index(marker) + 1 :]
            page = [s for s in servers if not s.purged][:limit]
            for server in page:  # booted by the time a listing comes (keeps tests quick)
                if server.status == "BUILD" and self.boots and not server.deleting:
                    server.status, server.task_state = "ACTIVE", None
            rendered = [self._render(s, request) for s in page]
        if self.down_cell_servers and marker is None and asked >= (2, 69):
            # From 2.69 Nova lists a server of an unreachable cell with what the API
            # database knows; before, it leaves the server out without a word.
            rendered += [{"id": server_id, "status": "UNKNOWN", "tenant_id": PROJECT_ID,
                          "created": "2024-05-01T10:00:00Z", "links": []}
                         for server_id in self.down_cell_servers]  # fmt: skip
        links = []
        if len(page) == limit and page:
            query["marker"] = marker if (self.repeat_next_link and marker) else page[-1].id
            # Nova builds the link from its own idea of its URL, often not the client's.
            links.append(
                {"rel": "next", "href": f"{_NOVA_SELF_URL}/servers/detail?{urlencode(query)}"}
            )
        return Response.of_json(self.fixture("servers.json", servers=rendered, links=links))

    def _create_server(self, request: Request) -> Response:
        spec = request.json()["server"]
        flavors = {f["id"] for f in self.fixture("flavors.json", compute=self.compute)["flavors"]}
        if spec.get("imageRef") not in {i[0] for i in _IMAGES}:
            return self._fault("badRequest", 400, message="Can not find requested image")
        if str(spec.get("flavorRef")) not in flavors:
            return self._fault(
                "badRequest", 400, message=f"Flavor {spec.get('flavorRef')} could not be found."
            )
        metadata = spec.get("metadata") or {}
        for key, value in metadata.items():
            if not _METADATA_KEY.match(key) or not isinstance(value, str) or len(value) > 255:
                return self._fault(
                    "badRequest", 400, message="Invalid input for field/attribute metadata."
                )
        user_data = spec.get("user_data")
        if user_data is not None:
            if len(user_data) > _USER_DATA_MAX:
                return self._fault("badRequest", 400, message="User data too large.")
            try:
                base64.b64decode(user_data, validate=True)
            except ValueError:
                return self._fault(
                    "badRequest", 400, message="User data needs to be valid base 64."
                )
        if self.quota_status is not None:  # v2.1: 403; legacy v2: 413, no Retry-After
            kind = "forbidden" if self.quota_status == 403 else "overLimit"
            message = "Quota exceeded for instances: Requested 1, but already used 10 of 10"
            return self._fault(kind, self.quota_status, message=message)
        with self.lock:
            self._created += 1
            n = self._created
            server = FakeServer(
                id=str(uuid.uuid4()),
                name=spec["name"],
                image_id=spec["imageRef"],
                flavor_id=str(spec["flavorRef"]),
                metadata=dict(metadata),
                created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                private_ip=f"10.0.{n // 250}.{n % 250 + 3}",
                user_data=user_data,
                config_drive=str(spec.get("config_drive", "")).lower() == "true",
                networks=[n["uuid"] for n in spec.get("networks") or []],
            )
            self.servers[server.id] = server
            if self.create_fails_after_commit > 0:
                self.create_fails_after_commit -= 1
                return self._fault("computeFault", 500, message="Unexpected API Error.")
        answer = self.fixture(
            "server_created.json",
            id=server.id,
            compute=self.compute,
            admin_pass="Adm1nPassFromNova",
        )
        return Response.of_json(answer, status=202)

    def _render(self, server: FakeServer, request: Request) -> dict[str, Any]:
        rendered: dict[str, Any] = self.fixture(
            "server.json",
            id=server.id,
            server_name=server.name,
            status=server.status,
            project_id=PROJECT_ID,
            metadata=server.metadata,
            image_id=server.image_id,
            flavor_id=server.flavor_id,
            created=server.created,
            private_ip=server.private_ip,
            compute=self.compute,
            config_drive="True" if server.config_drive else "",
            task_state=json.dumps(server.task_state),  # a JSON string or null
            vm_state=_VM_STATES.get(server.status, "stopped"),
        )
        if not server.self_link:
            rendered["links"] = [k for k in rendered["links"] if k["rel"] != "self"]
        # Microversion 2.3 adds the extended attributes (user data among them).
        if "compute 2.3" in request.headers.get("openstack-api-version", ""):
            rendered["OS-EXT-SRV-ATTR:user_data"] = server.user_data
        return rendered

    def _throttle_answer(self) -> Response:
        if self.throttle_status == 413:  # Nova's historic rate limiter
            body = self.fixture(
                "fault.json", kind="overLimit", code=413, message="This request was rate-limited."
            )
        else:
            body = self.fixture(
                "fault.json", kind="computeFault", code=429, message="Too Many Requests"
            )
        return Response.of_json(
            body, status=self.throttle_status, **{"Retry-After": self.retry_after}
        )

    # -- Glance and Neutron --------------------------------------------------------
    def _images(self, request: Request) -> Response:
        name = request.query.get("name", [None])[0]
        found = [
            self.fixture("image.json", id=i, image_name=n, created_at=c, project_id=PROJECT_ID)
            for i, n, c in reversed(_IMAGES)  # Glance lists newest first
            if name is None or n == name
        ]
        return Response.of_json(self.fixture("images.json", images=found))

    def _networks(self, request: Request) -> Response:
        payload = self.fixture("networks.json", network_id=NETWORK_ID, project_id=PROJECT_ID)
        name = request.query.get("name", [None])[0]
        payload["networks"] = [n for n in payload["networks"] if name in (None, n["name"])]
        return Response.of_json(payload)

    def _fault(self, kind: str, code: int, *, message: str) -> Response:
        return Response.of_json(
            self.fixture("fault.json", kind=kind, code=code, message=message), status=code
        )


def _microversion(request: Request) -> tuple[int, int]:
    """The compute microversion a request asks for (2.1 when it names none)."""
    header = request.headers.get("openstack-api-version", "")
    if header.startswith("compute "):
        major, _, minor = header.split(" ", 1)[1].partition(".")
        return int(major), int(minor)
    legacy = request.headers.get("x-openstack-nova-api-version", "2.1")
    major, _, minor = legacy.partition(".")
    return int(major), int(minor)


@contextmanager
def fake_openstack() -> Iterator[FakeOpenStack]:
    with serving(FakeOpenStack()) as cloud:
        yield cloud  # type: ignore[misc]


def write_openstack_desired(
    root: Path,
    cloud: FakeOpenStack,
    *,
    environments: dict[str, dict[str, dict[str, Any]]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """A desired state whose one provider is the fake OpenStack, reached through Keystone
    and its catalog (no `endpoint:`), with credentials as environment references."""
    write_desired(
        root,
        endpoint=cloud.base_url,
        environments=environments,
        driver="openstack",
        credentials={"key": {"env": "OS_TEST_USER"}, "secret": {"env": "OS_TEST_PASSWORD"}},
        provider_options={
            "region": "RegionOne",
            "auth_url": cloud.auth_url,
            "tenant": PROJECT,
            **(extra or {}),
        },
    )
    config_file = root / "reconciler.yaml"
    config = yaml.safe_load(config_file.read_text())
    profile = config["providers"]["cloud"]
    if "endpoint" not in (extra or {}):
        del profile["endpoint"]  # the catalog says where Nova is
    config["defaults"]["size"] = "m1.small"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def credentials_env() -> dict[str, str]:
    return {"OS_TEST_USER": USER, "OS_TEST_PASSWORD": PASSWORD}


def decoded_user_data(server: FakeServer) -> str | None:
    return base64.b64decode(server.user_data).decode() if server.user_data else None


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
