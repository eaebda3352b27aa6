"""A fake Google Compute Engine on loopback, for the GCE adapter's tests.

Speaks the part of the Compute v1 REST API the adapter uses (zonal instances list,
insert, get, delete; zone operations; machine types; images.getFromFamily) and the
OAuth2 token endpoint, from the response files in tests/support/fixtures/gce/. Stateful: an
insert adds an instance (RUNNING at once), a delete leaves it STOPPING for one listing
that shows it and then removes it (as GCE does, for longer), listings come back two to
a page.

It checks what a real GCE would refuse: a token request whose JWT is not signed by
the service account's key, an API call without that token, an instance name that is
not RFC 1035, labels outside GCE's syntax, a second instance of one name (409
`alreadyExists`); and it answers a repeated insert `requestId` with the first
operation, as GCE does.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import threading
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.desired_builder import write_desired
from tests.support.fakecloud import FakeCloud, Request, Response

PROJECT = "acme-prod"
ZONE = "us-central1-a"
EMAIL = "reconciler@acme-prod.iam.gserviceaccount.com"
TOKEN = "ya29.canary-access-token-5d1c"  # a canary: must never be printed
TOKEN_PATH = "/o/oauth2/token"
_API = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/(?P<rest>.+)$")
_FAMILY = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/images/family/(?P<f>.+)$")
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_FILTER_TERM = re.compile(r'\(labels\.([a-z0-9_-]+) = "([a-z0-9_-]*)"\)')


@cache
def service_account_key() -> tuple[str, rsa.RSAPublicKey]:
    """(private key PEM, public key): one per test session (generation takes a moment)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


def pem_canaries() -> list[str]:
    """Lines of the private key's body: none may ever appear in output or files."""
    pem, _ = service_account_key()
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


class FakeGce(FakeCloud):
    """The fake. Fault switches beyond the base class's `throttle` and `partial_listing`:
    `repeat_page_token` (page two names page one's token again), `exists_in_operation` (an
    insert of an existing name is accepted; its operation ends RESOURCE_ALREADY_EXISTS),
    `lose_insert_responses`
    (an insert takes effect, but its answer is a 503), `pending_operations` (inserts
    answer RUNNING; reading the operation says DONE), `fail_operations` (an insert's
    operation ends with QUOTA_EXCEEDED), `echo_metadata` (an insert is refused with a
    400 that quotes its metadata, as GCE does for an invalid value), `answer_next`
    (canned answers for the next requests to a path), `revoke_tokens` and
    `hold_refusals` (for token races)."""

    fixture_dir = "gce"
    auth_paths = (TOKEN_PATH,)  # the token exchange: a POST that changes nothing

    def __init__(self, page_size: int = 2) -> None:
        super().__init__()
        self.page_size = page_size
        self.instances: dict[str, dict[str, Any]] = {}  # in insert order
        self.operations: dict[str, dict[str, Any]] = {}
        self.request_ids: dict[str, str] = {}  # requestId -> operation name
        self.bodies: list[dict[str, Any]] = []  # every insert body received
        self.token_requests = 0
        self.valid_tokens: set[str] = set()
        self.families: dict[tuple[str, str], str] = {}  # (project, family) -> image name
        self.stopping: dict[str, int] = {}  # deleted name -> listings left to show it in
        self.listed_stopping: list[str] = []  # STOPPING instances each listing showed
        self.echo_metadata = False
        self._canned: list[tuple[str, str, Response]] = []
        self._refusal_barrier: threading.Barrier | None = None
        self._refusals_held = 0
        self._token_barrier: threading.Barrier | None = None
        self.list_filters: list[str] = []  # the filter of every instance listing
        self.repeat_page_token = False
        self.lose_insert_responses = 0
        self.pending_operations = False
        self.fail_operations = False
        self.exists_in_operation = False
        self.deprecated_types: dict[str, tuple[str, str | None]] = {}  # name -> (state, repl)
        self.deleted_listed_running = 0  # listings that still show a deleted one RUNNING
        self.errors_when_done: dict[str, dict[str, Any]] = {}  # operation name -> error
        self._ids = itertools.count(4_100_000_000_000_000_001)

    # -- what tests use --------------------------------------------------------
    def api_requests(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[1] != TOKEN_PATH]

    def add_foreign(self, name: str, labels: dict[str, str]) -> None:
        """An instance someone else launched (console, terraform...)."""
        with self.lock:
            self.instances[name] = self._instance(
                name, machine_type="e2-small", labels=labels, metadata=[], status="RUNNING"
            )

    def answer_next(self, method: str, path_end: str, response: Response, times: int = 1) -> None:
        """Answer the next `times` `method` requests whose path ends with `path_end`
        with `response` (after the token check), whatever the state."""
        with self.lock:
            self._canned.extend([(method, path_end, response)] * times)

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused (401) from now on."""
        with self.lock:
            self.valid_tokens.clear()

    def hold_refusals(self, parties: int) -> None:
        """The next `parties` refused requests are answered together, once all arrived."""
        with self.lock:
            self._refusal_barrier = threading.Barrier(parties, timeout=20)
            self._refusals_held = parties

    def hold_token_requests(self, parties: int, *, wait: float = 1.0) -> None:
        """A token request waits (up to `wait` seconds) for `parties` of them to arrive
        together, so clients that would fetch in parallel reliably do so."""
        self._token_barrier = threading.Barrier(parties, timeout=wait)

    def metadata(self, name: str) -> dict[str, str]:
        items = self.instances[name]["metadata"]["items"]
        return {item["key"]: item["value"] for item in items}

    # -- the API -----------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path == TOKEN_PATH and request.method == "POST":
            return self._token(request)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.valid_tokens:
            with self.lock:
                barrier = self._refusal_barrier if self._refusals_held > 0 else None
                self._refusals_held -= 1
            if barrier is not None:
                barrier.wait()  # outside the lock: the other parties must get in
            return self._error(
                401, "Request had invalid authentication credentials.", reason="authError"
            )
        if self.throttled():
            answer = self._error(429, "Rate Limit Exceeded", reason="rateLimitExceeded")
            answer.headers["Retry-After"] = self.retry_after
            return answer
        with self.lock:
            for canned in self._canned:
                if canned[0] == request.method and request.path.endswith(canned[1]):
                    self._canned.remove(canned)
                    return canned[2]
        family = _FAMILY.match(request.path)
        if family is not None and request.method == "GET":
            return self._family(family["project"], family["f"])
        match = _API.match(request.path)
        if match is None:
            return self._error(404, f"The requested URL {request.path} was not found.")
        zone, rest = match["zone"], match["rest"]
        with self.lock:
            if rest == "instances" and request.method == "GET":
                return self._list_instances(request, zone)
            if rest == "instances" and request.method == "POST":
                return self._insert(request, zone)
            if rest == "machineTypes" and request.method == "GET":
                items = self.fixture("machine_type_list.json", project=PROJECT, zone=zone)["items"]
                for item in items:  # as GCE marks a machine type on its way out
                    if item["name"] in self.deprecated_types:
                        state, replacement = self.deprecated_types[item["name"]]
                        item["deprecated"] = {"state": state, **(
                            {"replacement": f"https://www.googleapis.com/compute/v1/projects/"
                                            f"{PROJECT}/zones/{zone}/machineTypes/{replacement}"}
                            if replacement else {})}  # fmt: skip
                return self._page(request, "machine_type_list.json", items, zone, faults=False)
            kind, _, name = rest.partition("/")
            if kind == "instances" and name in self.instances:
                if request.method == "GET":
                    return Response.of_json(self.instances[name])
                if request.method == "DELETE":
                    # GCE lists a deleted instance RUNNING for a moment, then STOPPING.
                    self.instances[name]["status"] = (
                        "RUNNING" if self.deleted_listed_running else "STOPPING"
                    )
                    self.stopping.setdefault(name, 1 + self.deleted_listed_running)
                    return Response.of_json(self._operation("delete", name, zone))
            if kind == "operations" and name in self.operations and request.method == "GET":
                operation = self.operations[name]
                operation.update(status="DONE", progress=100)
                if name in self.errors_when_done:
                    operation["error"] = self.errors_when_done.pop(name)
                return Response.of_json(operation)
        return self._error(404, f"The resource '{rest}' was not found", reason="notFound")

    def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in _form(request.body).items()}
        assertion = form.get("assertion", "")
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not (
            _signed_by_service_account(assertion)
        ):
            return Response.of_json(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        barrier = self._token_barrier
        if barrier is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()  # broken when fewer came (as they should): answer
        with self.lock:
            self.token_requests += 1
            token = TOKEN if self.token_requests == 1 else f"{TOKEN}.{self.token_requests}"
            self.valid_tokens.add(token)
        return Response.of_json(self.fixture("token.json", token=token))

    def _family(self, project: str, family: str) -> Response:
        name = self.families.get((project, family))
        if name is None:
            return self._error(
                404,
                f"The resource 'projects/{project}/global/images/family/{family}' was not found",
            )
        return Response.of_json(
            self.fixture("image.json", project=project, image=name, family=family)
        )

    def _list_instances(self, request: Request, zone: str) -> Response:
        terms = request.query.get("filter", [""])[0]
        self.list_filters.append(terms)
        wanted = dict(_FILTER_TERM.findall(terms))
        if _FILTER_TERM.sub("", terms).strip():
            return self._error(
                400, f"Invalid value for field 'filter': '{terms}'.", reason="invalid"
            )
        if "pageToken" not in request.query:  # a new listing: end what was shown stopping
            for name, left in list(self.stopping.items()):
                if left <= 0:
                    del self.stopping[name], self.instances[name]
        items = [
            i
            for i in self.instances.values()
            if all(i["labels"].get(k) == v for k, v in wanted.items())
        ]
        if "pageToken" not in request.query:
            shown = [i["name"] for i in items if i["name"] in self.stopping]
            self.listed_stopping.extend(shown)
            for name in shown:
                self.stopping[name] -= 1
        return self._page(request, "instance_list.json", items, zone)

    def _page(
        self,
        request: Request,
        template: str,
        items: list[dict[str, Any]],
        zone: str,
        *,
        faults: bool = True,
    ) -> Response:
        size = min(self.page_size, int(request.query.get("maxResults", ["500"])[0]))
        start = int(request.query.get("pageToken", ["0"])[0])
        page = self.fixture(template, project=PROJECT, zone=zone, items=[])
        page["items"] = items[start : start + size]
        if not page["items"]:
            del page["items"]  # GCE omits an empty list
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
            if self.repeat_page_token and start > 0:
                page["nextPageToken"] = str(start)
        if self.partial_listing and faults:
            page.pop("nextPageToken", None)
            page["warning"] = self.fixture("unreachable_warning.json", project=PROJECT, zone=zone)
        return Response.of_json(page)

    def _insert(self, request: Request, zone: str) -> Response:
        body = request.json()
        self.bodies.append(body)
        request_id = request.query.get("requestId", [""])[0]
        if request_id in self.request_ids:
            return Response.of_json(self.operations[self.request_ids[request_id]])
        name = body.get("name", "")
        if not _NAME.fullmatch(name):
            return self._error(
                400, f"Invalid value for field 'resource.name': '{name}'.", reason="invalid"
            )
        labels = body.get("labels", {})
        for key, value in labels.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                return self._error(
                    400, f"Invalid value for field 'resource.labels': '{key}'.", reason="invalid"
                )
        if name in self.instances and self.exists_in_operation:
            # What GCE does with a second insert of a name: the request is accepted, and
            # its operation ends DONE with RESOURCE_ALREADY_EXISTS.
            operation = self._operation("insert", name, zone, request_id=request_id)
            error = {"errors": [{
                "code": "RESOURCE_ALREADY_EXISTS",
                "message": f"The resource 'projects/{PROJECT}/zones/{zone}/instances/{name}' "
                "already exists",
            }]}  # fmt: skip
            if operation["status"] == "DONE":
                operation["error"] = error
            else:  # the error shows once the operation is read DONE
                self.errors_when_done[operation["name"]] = error
            return Response.of_json(operation)
        if name in self.instances:
            return self._error(409, f"The resource '{name}' already exists", reason="alreadyExists")
        if self.echo_metadata:
            quoted = json.dumps(body.get("metadata"))
            return self._error(
                400, f"Invalid value for field 'resource.metadata': '{quoted}'.", reason="invalid"
            )
        machine_type = body["machineType"].rsplit("/", 1)[-1]
        metadata = body.get("metadata", {}).get("items", [])
        self.instances[name] = self._instance(
            name, machine_type=machine_type, labels=labels, metadata=metadata, status="RUNNING"
        )
        operation = self._operation("insert", name, zone, request_id=request_id)
        if self.lose_insert_responses > 0:
            self.lose_insert_responses -= 1
            return self._error(503, "The service is currently unavailable.", reason="backendError")
        return Response.of_json(operation)

    # -- building answers --------------------------------------------------------
    def _instance(
        self,
        name: str,
        *,
        machine_type: str,
        labels: dict[str, str],
        metadata: list[dict[str, str]],
        status: str,
    ) -> dict[str, Any]:
        number = len(self.instances) + 2
        instance: dict[str, Any] = self.fixture(
            "instance.json",
            id=str(next(self._ids)),
            instance=name,
            project=PROJECT,
            zone=ZONE,
            machine_type=machine_type,
            status=status,
            private_ip=f"10.128.0.{number}",
            access_configs=[
                {
                    "kind": "compute#accessConfig",
                    "type": "ONE_TO_ONE_NAT",
                    "name": "External NAT",
                    "natIP": f"34.72.0.{number}",
                }
            ],
            metadata_items=metadata,
            labels=labels,
        )
        return instance

    def _operation(
        self, kind: str, target: str, zone: str, *, request_id: str = ""
    ) -> dict[str, Any]:
        number = next(self._ids)
        name = f"operation-{number}-{kind}"
        done = not self.pending_operations
        operation: dict[str, Any] = self.fixture(
            "operation.json",
            id=str(number),
            operation=name,
            project=PROJECT,
            zone=zone,
            operation_type=kind,
            target=target,
            target_id=str(number),
            status="DONE" if done else "RUNNING",
            user=EMAIL,
            progress=100 if done else 0,
        )
        if self.fail_operations and kind == "insert":
            operation["error"] = {
                "errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'CPUS' exceeded."}]
            }
            self.instances.pop(target, None)
        self.operations[name] = operation
        if request_id:
            self.request_ids[request_id] = name
        return operation

    def _error(self, status: int, message: str, *, reason: str = "notFound") -> Response:
        return Response.of_json(
            self.fixture(
                "error.json",
                code=status,
                message=json.dumps(message)[1:-1],  # the template quotes it
                domain="global",
                reason=reason,
            ),
            status=status,
        )


def _form(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode())


def _signed_by_service_account(assertion: str) -> bool:
    """True if `assertion` is a JWT for EMAIL, signed by the session's key (RS256)."""
    try:
        header, claims, signature = assertion.split(".")
        _, public_key = service_account_key()
        public_key.verify(
            base64.urlsafe_b64decode(signature),
            f"{header}.{claims}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        return bool(json.loads(base64.urlsafe_b64decode(claims))["iss"] == EMAIL)
    except Exception:  # any malformed assertion is simply refused
        return False


# -- desired state for the end-to-end tests ---------------------------------------


def write_gce_desired(
    root: Path,
    *,
    endpoint: str,
    environments: dict[str, dict[str, dict[str, Any]]],
    size: str = "e2-small",
) -> Path:
    """A desired state whose one provider is `driver: gce` (credentials from the env)."""
    write_desired(
        root,
        endpoint=endpoint,
        environments=environments,
        driver="gce",
        credentials={"key": {"env": "TEST_GCE_EMAIL"}, "secret": {"env": "TEST_GCE_KEY"}},
        provider_options={"project": PROJECT},
    )
    config_path = root / "reconciler.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["providers"]["cloud"]["region"] = ZONE
    config["defaults"]["size"] = size
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return root
