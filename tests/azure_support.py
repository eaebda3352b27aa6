"""A fake Azure (Azure AD login + Resource Manager) for the Azure adapter's tests.

Serves, from the response files in tests/fixtures/azure/, the little of ARM the adapter
uses: the client-credentials token, VMs and NICs of one resource group (PUT, GET,
DELETE, and lists of `page_size` items a page linked by `nextLink`), and the location's
VM sizes. Stateful: a PUT VM adds one, a DELETE removes it with the NIC and OS disk
whose `deleteOption` is `Delete`. Listings show a VM as `Succeeded` (booted) at once.

Faults: `throttle(n)` answers 429 `TooManyRequests`; `forbidden` answers 403
`AuthorizationFailed` (whose message names the client id); `partial_listing` makes every
continuation page fail the way an expired `$skiptoken` does, so only the first page
could be read; `lose_next_vm_response` creates the next VM and then answers 500.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

from tests.fakecloud import FakeCloud, Request, Response

TENANT = "8f0c1c36-0000-4000-8000-00000000a2e1"
SUBSCRIPTION = "5b2e7d1a-0000-4000-8000-0000000000b5"
RESOURCE_GROUP = "reconciler-rg"
LOCATION = "westeurope"
CLIENT_ID = "3c1a9e55-0000-4000-8000-0000000c11e7"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000 ops@example"
IMAGE_V1 = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
IMAGE_V2 = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.202404230"

_GROUP = rf"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
_ROUTES = [
    ("vm", re.compile(rf"^{_GROUP}/Microsoft\.Compute/virtualMachines(?:/([^/]+))?$", re.I)),
    ("nic", re.compile(rf"^{_GROUP}/Microsoft\.Network/networkInterfaces(?:/([^/]+))?$", re.I)),
    (
        "sizes",
        re.compile(
            rf"^/subscriptions/{SUBSCRIPTION}/providers/Microsoft\.Compute/locations/([^/]+)/vmSizes$",
            re.I,
        ),
    ),
]


class AzureCloud(FakeCloud):
    fixture_dir = "azure"

    def __init__(self, *, client_secret: str, page_size: int = 2) -> None:
        super().__init__()
        self.client_secret = client_secret
        self.page_size = page_size
        self.vms: dict[str, dict[str, Any]] = {}  # name -> {"body": PUT body, ...}
        self.nics: dict[str, dict[str, Any]] = {}
        self.disks: set[str] = set()
        self.vm_puts: list[dict[str, Any]] = []  # every PUT VM body received
        self.lose_next_vm_response = False
        self.forbidden = False  # the client may log in but not read the resource group
        self._token = "fake-token-" + uuid.uuid4().hex
        self.sizes_offered = {s["name"] for s in self.fixture("vm_sizes.json")["value"]}

    # -- what tests use ------------------------------------------------------
    def mutating_requests(self) -> list[tuple[str, str]]:
        """Mutations of cloud resources: a login (POST token) changes nothing."""
        return [(m, p) for m, p in super().mutating_requests() if not p.endswith("/oauth2/token")]

    def list_pages(self, kind: str = "virtualMachines") -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p.endswith("/" + kind))

    def custom_data(self, name: str) -> str:
        body = self.vms[name]["body"]
        return base64.b64decode(body["properties"]["osProfile"]["customData"]).decode()

    def add_foreign_vm(self, name: str, tags: dict[str, str]) -> None:
        """A VM this project did not make (someone's, in the same resource group)."""
        nic = self._put_nic(f"{name}-nic", {"location": LOCATION})
        self._create_vm(
            name,
            {
                "location": LOCATION,
                "tags": tags,
                "properties": {
                    "hardwareProfile": {"vmSize": "Standard_B1s"},
                    "storageProfile": {
                        "imageReference": {
                            "publisher": "Debian",
                            "offer": "debian-12",
                            "sku": "12",
                            "version": "latest",
                        }
                    },
                    "osProfile": {"adminUsername": "someone"},
                    "networkProfile": {"networkInterfaces": [{"id": nic["id"]}]},
                },
            },
        )

    # -- the API -------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path == f"/{TENANT}/oauth2/token":
            return self._login(request)
        if request.headers.get("authorization") != f"Bearer {self._token}":
            return self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if self.forbidden:
            return self._error(
                403,
                "AuthorizationFailed",
                f"The client '{CLIENT_ID}' with object id '{CLIENT_ID}' does not "
                "have authorization to perform action "
                "'Microsoft.Compute/virtualMachines/read' over scope "
                f"'/subscriptions/{SUBSCRIPTION}'.",
            )
        if self.throttled():
            body = self.fixture(
                "error.json", code="TooManyRequests", message="The request is being throttled."
            )
            return Response.of_json(body, status=429, **{"Retry-After": "0"})
        for kind, pattern in _ROUTES:
            match = pattern.match(request.path)
            if match:
                with self.lock:
                    return getattr(self, f"_{kind}")(request, match.group(1))
        return self._error(404, "InvalidResourceType", "The resource type could not be found.")

    def _login(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != self.client_secret:
            return Response.of_json(self.fixture("login_error.json"), status=401)
        now = int(time.time())
        return Response.of_json(
            self.fixture(
                "token.json",
                expires_on=str(now + 3600),
                not_before=str(now),
                access_token=self._token,
            )
        )

    def _vm(self, request: Request, name: str | None) -> Response:
        if name is None:
            if request.method != "GET":
                return self._error(405, "MethodNotAllowed", "Only GET lists.")
            names = sorted(self.vms)
            return self._page(request, [self._vm_json(self.vms[n], "Succeeded") for n in names])
        if request.method == "PUT":
            return self._put_vm(name, request.json())
        vm = self.vms.get(name)
        if request.method == "DELETE":
            if vm is None:
                return Response(status=204)
            self._delete_vm(name)
            return Response(status=202, headers={"Content-Type": "application/json"})
        if vm is None:
            return self._error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under "
                f"resource group '{RESOURCE_GROUP}' was not found.",
            )
        payload = self._vm_json(vm, "Succeeded")
        if request.query.get("$expand") == ["userData"] and "userData" in vm["body"]["properties"]:
            payload["properties"]["userData"] = vm["body"]["properties"]["userData"]
        return Response.of_json(payload)

    def _put_vm(self, name: str, body: dict[str, Any]) -> Response:
        self.vm_puts.append(body)
        if name in self.vms:  # ARM PUT by name: the same VM, updated (here: unchanged)
            return Response.of_json(self._vm_json(self.vms[name], "Succeeded"))
        size = body["properties"]["hardwareProfile"]["vmSize"]
        if size not in self.sizes_offered:
            return self._error(
                400, "InvalidParameter", f"The value {size} provided for the VM size is not valid."
            )
        for ref in body["properties"]["networkProfile"]["networkInterfaces"]:
            if ref["id"].rsplit("/", 1)[-1] not in self.nics:
                return self._error(
                    400, "InvalidResourceReference", "Resource referenced by the VM was not found."
                )
        vm = self._create_vm(name, body)
        if self.lose_next_vm_response:
            self.lose_next_vm_response = False
            return self._error(500, "InternalServerError", "An internal error occurred.")
        return Response.of_json(self._vm_json(vm, "Creating"), status=201)

    def _create_vm(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        disk = (
            body["properties"]["storageProfile"].get("osDisk", {}).get("name") or f"{name}_OsDisk"
        )
        self.disks.add(disk)
        vm = {
            "name": name,
            "body": body,
            "disk": disk,
            "vm_id": str(uuid.uuid4()),
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        self.vms[name] = vm
        return vm

    def _delete_vm(self, name: str) -> None:
        vm = self.vms.pop(name)
        properties = vm["body"]["properties"]
        for ref in properties["networkProfile"]["networkInterfaces"]:
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                self.nics.pop(ref["id"].rsplit("/", 1)[-1], None)
        if properties["storageProfile"].get("osDisk", {}).get("deleteOption") == "Delete":
            self.disks.discard(vm["disk"])

    def _vm_json(self, vm: dict[str, Any], state: str) -> Any:
        name, properties = vm["name"], vm["body"]["properties"]
        image = dict(properties["storageProfile"]["imageReference"])
        if image.get("version") == "latest":
            image["exactVersion"] = "22.04.202405010"
        os_disk = properties["storageProfile"].get("osDisk", {})
        os_profile = properties["osProfile"]
        return self.fixture(
            "virtual_machine.json",
            vm_name=name,
            id=f"{_GROUP}/Microsoft.Compute/virtualMachines/{name}",
            location=vm["body"]["location"],
            tags=vm["body"].get("tags") or {},
            vm_id=vm["vm_id"],
            size=properties["hardwareProfile"]["vmSize"],
            image_reference=image,
            disk_name=vm["disk"],
            disk_type=os_disk.get("managedDisk", {}).get("storageAccountType", "Standard_LRS"),
            disk_id=f"{_GROUP}/Microsoft.Compute/disks/{vm['disk']}",
            disk_delete_option=os_disk.get("deleteOption", "Detach"),
            computer_name=os_profile.get("computerName", name),
            admin_user=os_profile["adminUsername"],
            linux_configuration=os_profile.get("linuxConfiguration")
            or {"disablePasswordAuthentication": False},
            network_interfaces=properties["networkProfile"]["networkInterfaces"],
            provisioning_state=state,
            time_created=vm["created"],
        )

    def _nic(self, request: Request, name: str | None) -> Response:
        if name is None:
            return self._page(request, [self.nics[n] for n in sorted(self.nics)])
        if request.method == "PUT":
            created = name not in self.nics
            return Response.of_json(
                self._put_nic(name, request.json()), status=201 if created else 200
            )
        if request.method == "DELETE":
            if name not in self.nics:
                return Response(status=204)
            if any(
                name in str(vm["body"]["properties"]["networkProfile"]) for vm in self.vms.values()
            ):
                return self._error(400, "NicInUse", "The network interface is in use by a VM.")
            del self.nics[name]
            return Response(status=200)
        if name not in self.nics:
            return self._error(404, "NotFound", f"Resource {name} not found.")
        return Response.of_json(self.nics[name])

    def _put_nic(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name not in self.nics:
            configs = (body.get("properties") or {}).get("ipConfigurations") or [{}]
            subnet = (configs[0].get("properties") or {}).get("subnet", {}).get("id", "")
            self.nics[name] = self.fixture(
                "network_interface.json",
                nic_name=name,
                id=f"{_GROUP}/Microsoft.Network/networkInterfaces/{name}",
                etag=str(uuid.uuid4()),
                location=body.get("location", LOCATION),
                private_ip=f"10.0.{len(self.nics) // 250}.{len(self.nics) % 250 + 4}",
                subnet_id=subnet,
            )
        return self.nics[name]

    def _sizes(self, request: Request, location: str) -> Response:
        return Response.of_json(self.fixture("vm_sizes.json"))

    def _page(self, request: Request, items: list[Any]) -> Response:
        skip = int((request.query.get("$skiptoken") or ["0"])[0])
        if skip and self.partial_listing:
            return self._error(400, "InvalidSkipToken", "The skip token is invalid or expired.")
        end = skip + self.page_size
        next_link = None
        if end < len(items):
            version = quote((request.query.get("api-version") or [""])[0])
            next_link = f"{self.base_url}{request.path}?api-version={version}&$skiptoken={end}"
        return Response.of_json(
            self.fixture("list.json", value=items[skip:end], next_link=json.dumps(next_link))
        )

    def _error(self, status: int, code: str, message: str) -> Response:
        return Response.of_json(
            self.fixture("error.json", code=code, message=message), status=status
        )
