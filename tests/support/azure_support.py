"""A fake Azure (Azure AD login + Resource Manager) for the Azure adapter's tests.

Serves, from the response files in tests/support/fixtures/azure/, the little of ARM the adapter
uses: the client-credentials token, VMs and NICs of one resource group (PUT, GET,
DELETE, and lists of `page_size` items a page linked by `nextLink`), the subscription's
VM statuses (`statusOnly=true`, which also shows a VM of another resource group), and
the location's VM sizes. Stateful: a PUT VM adds one, with the NIC its network
interface configuration defines (named as Azure does: not from anything the client
sent alone); a DELETE removes it with the NICs and OS disk whose `deleteOption` is
`Delete`. Listings show a VM as `Succeeded` and running at once; `vms[name]["power"]`
and `["provisioning"]` change that. As ARM does, ids come back in varying case: the
resource group listing upper-cases the group, the status listing lower-cases the id,
and VM names are looked up case-insensitively.

Faults: `throttle(n)` answers 429 `TooManyRequests`; `forbidden` answers 403
`AuthorizationFailed` (whose message names the client id); `partial_listing` makes every
continuation page fail the way an expired `$skiptoken` does, so only the first page
could be read (`partial_status_listing`: only the status listing's); `lose_next_vm_response`
creates the next VM and then answers 500; `failing_vm_puts` answers that many VM PUTs
with a 500 without creating anything; `garbled_statuses` serves statuses that are
not a list.
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

from tests.support.fakecloud import FakeCloud, Request, Response

TENANT = "8f0c1c36-0000-4000-8000-00000000a2e1"
SUBSCRIPTION = "5b2e7d1a-0000-4000-8000-0000000000b5"
RESOURCE_GROUP = "reconciler-rg"
LOCATION = "westeurope"
CLIENT_ID = "3c1a9e55-0000-4000-8000-0000000c11e7"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000 ops@example"
IMAGE_V1 = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
IMAGE_V2 = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.202404230"

_GROUP = rf"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
_LISTED_GROUP = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP.upper()}/providers"
_VMS = r"providers/Microsoft\.Compute/virtualMachines"
_ROUTES = [
    ("statuses", re.compile(rf"^/subscriptions/{SUBSCRIPTION}/{_VMS}$", re.I)),
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
    auth_paths = ("/oauth2/token",)  # the login: a POST that changes nothing in the cloud

    def __init__(self, *, client_secret: str, page_size: int = 2) -> None:
        super().__init__()
        self.client_secret = client_secret
        self.page_size = page_size
        self.vms: dict[str, dict[str, Any]] = {}  # name -> {"body": PUT body, ...}
        self.nics: dict[str, dict[str, Any]] = {}
        self.disks: set[str] = set()
        self.vm_puts: list[dict[str, Any]] = []  # every PUT VM body received
        self.vm_put_versions: list[str] = []  # and its api-version
        self.lose_next_vm_response = False
        self.failing_vm_puts = 0
        self.partial_status_listing = False
        self.garbled_statuses = False
        self.forbidden = False  # the client may log in but not read the resource group
        self._token = "fake-token-" + uuid.uuid4().hex
        self.sizes_offered = {s["name"] for s in self.fixture("vm_sizes.json")["value"]}

    # -- what tests use ------------------------------------------------------
    def list_pages(self, kind: str = "virtualMachines") -> int:
        """Pages read of the resource group's `kind` listing, or of the status listing."""
        if kind == "statuses":
            path = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/virtualMachines"
            return sum(1 for m, p in self.requests if m == "GET" and p == path)
        return sum(
            1
            for m, p in self.requests
            if m == "GET" and p.endswith("/" + kind) and "/resourceGroups/" in p
        )

    def custom_data(self, name: str) -> str:
        body = self.vms[name.lower()]["body"]
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
        nic["properties"]["virtualMachine"] = {"id": self._vm_id(name)}

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
            return Response.of_json(body, status=429, **{"Retry-After": self.retry_after})
        for kind, pattern in _ROUTES:
            match = pattern.match(request.path)
            if match:
                name = match.group(1) if pattern.groups else None
                with self.lock:
                    return getattr(self, f"_{kind}")(request, name)
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

    def _vm_id(self, name: str, group: str = _GROUP) -> str:
        return f"{group}/Microsoft.Compute/virtualMachines/{self.vms[name.lower()]['name']}"

    def _vm(self, request: Request, name: str | None) -> Response:
        if name is None:
            if request.method != "GET":
                return self._error(405, "MethodNotAllowed", "Only GET lists.")
            listed = [self._vm_json(self.vms[n], group=_LISTED_GROUP) for n in sorted(self.vms)]
            return self._page(request, listed)
        if request.method == "PUT":
            self.vm_put_versions.append((request.query.get("api-version") or [""])[0])
            return self._put_vm(name, request.json())
        vm = self.vms.get(name.lower())
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
        payload = self._vm_json(vm)
        if request.query.get("$expand") == ["userData"] and "userData" in vm["body"]["properties"]:
            payload["properties"]["userData"] = vm["body"]["properties"]["userData"]
        return Response.of_json(payload)

    def _put_vm(self, name: str, body: dict[str, Any]) -> Response:
        self.vm_puts.append(body)
        if self.failing_vm_puts:
            self.failing_vm_puts -= 1
            return self._error(500, "InternalServerError", "An internal error occurred.")
        if name.lower() in self.vms:  # ARM PUT by name: the same VM, updated (here: unchanged)
            return Response.of_json(self._vm_json(self.vms[name.lower()]))
        size = body["properties"]["hardwareProfile"]["vmSize"]
        if size not in self.sizes_offered:
            return self._error(
                400, "InvalidParameter", f"The value {size} provided for the VM size is not valid."
            )
        network = body["properties"]["networkProfile"]
        for ref in network.get("networkInterfaces") or []:
            if ref["id"].rsplit("/", 1)[-1] not in self.nics:
                return self._error(
                    400, "InvalidResourceReference", "Resource referenced by the VM was not found."
                )
        configs = network.get("networkInterfaceConfigurations") or []
        if configs and (
            network.get("networkApiVersion") != "2020-11-01" or self.vm_put_versions[-1] < "2021-11"
        ):
            return self._error(
                400, "InvalidParameter", "networkInterfaceConfigurations need networkApiVersion."
            )
        for config in configs:
            for ip in config["properties"]["ipConfigurations"]:
                if not ip["properties"]["subnet"]["id"].endswith("/subnets/default"):
                    return self._error(400, "InvalidResourceReference", "Subnet not found.")
        if not configs and not network.get("networkInterfaces"):
            return self._error(400, "InvalidParameter", "The VM needs a network interface.")
        vm = self._create_vm(name, body)
        if self.lose_next_vm_response:
            self.lose_next_vm_response = False
            return self._error(500, "InternalServerError", "An internal error occurred.")
        return Response.of_json(self._vm_json(vm, state="Creating"), status=201)

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
            "provisioning": "Succeeded",
            "power": "running",
            "nics": [],  # (name, deleteOption) of the NICs made from its configurations
        }
        self.vms[name.lower()] = vm
        network = body["properties"]["networkProfile"]
        for config in network.get("networkInterfaceConfigurations") or []:
            # Azure derives the NIC's name; nothing may depend on how.
            nic_name = f"{config['name']}-{uuid.uuid4().hex[:5]}"
            subnet = config["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"]
            nic = self._put_nic(nic_name, {"location": body["location"]}, subnet=subnet)
            nic["properties"]["virtualMachine"] = {"id": self._vm_id(name).lower()}
            nic["properties"]["primary"] = bool(config["properties"].get("primary"))
            vm["nics"].append((nic_name, config["properties"].get("deleteOption", "Detach")))
        return vm

    def _delete_vm(self, name: str) -> None:
        vm = self.vms.pop(name.lower())
        properties = vm["body"]["properties"]
        for ref in properties["networkProfile"].get("networkInterfaces") or []:
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                self.nics.pop(ref["id"].rsplit("/", 1)[-1], None)
        for nic_name, delete_option in vm["nics"]:
            if delete_option == "Delete":
                self.nics.pop(nic_name, None)
            else:
                self.nics[nic_name]["properties"].pop("virtualMachine", None)
        if properties["storageProfile"].get("osDisk", {}).get("deleteOption") == "Delete":
            self.disks.discard(vm["disk"])

    def _network_profile(self, vm: dict[str, Any]) -> dict[str, Any]:
        """As GET shows it: what was sent, plus references to the NICs Azure made."""
        sent = vm["body"]["properties"]["networkProfile"]
        made = [
            {
                "id": f"{_GROUP}/Microsoft.Network/networkInterfaces/{nic_name}",
                "properties": {"deleteOption": delete_option},
            }
            for nic_name, delete_option in vm["nics"]
        ]
        return {**sent, "networkInterfaces": (sent.get("networkInterfaces") or []) + made}

    def _vm_json(self, vm: dict[str, Any], *, state: str | None = None, group: str = _GROUP) -> Any:
        name, properties = vm["name"], vm["body"]["properties"]
        image = dict(properties["storageProfile"]["imageReference"])
        if image.get("version") == "latest":
            image["exactVersion"] = "22.04.202405010"
        os_disk = properties["storageProfile"].get("osDisk", {})
        os_profile = properties["osProfile"]
        document = self.fixture(
            "virtual_machine.json",
            vm_name=name,
            id=self._vm_id(name, group),
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
            network_profile=self._network_profile(vm),
            provisioning_state=state or vm["provisioning"],
            time_created=vm["created"],
        )
        if vm.get("from_disk"):  # made from (or swapped to) a disk: ARM names no image
            storage = document["properties"]["storageProfile"]
            del storage["imageReference"]
            storage["osDisk"]["createOption"] = "Attach"
        return document

    def _statuses(self, request: Request, _name: None) -> Response:
        """Virtual Machines - List All: with statusOnly=true, each VM's instance view."""
        if request.query.get("statusOnly") != ["true"]:
            return self._error(400, "InvalidParameter", "Only statusOnly=true is served here.")
        if self.partial_status_listing and "$skiptoken" in request.query:
            return self._error(400, "InvalidSkipToken", "The skip token is invalid or expired.")
        other = {
            "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/other-rg/providers/"
            "Microsoft.Compute/virtualMachines/elsewhere",
            "name": "elsewhere",
            "provisioning": "Succeeded",
            "power": "deallocated",
        }
        vms = [
            {
                "id": self._vm_id(n).lower(),
                "name": self.vms[n]["name"],
                "provisioning": self.vms[n]["provisioning"],
                "power": self.vms[n]["power"],
            }
            for n in sorted(self.vms)
        ]
        items = [
            self.fixture(
                "vm_status.json",
                id=vm["id"],
                vm_name=vm["name"],
                location=LOCATION,
                provisioning=vm["provisioning"].lower(),
                power=vm["power"],
            )
            for vm in [other, *vms]
        ]
        if self.garbled_statuses:
            for item in items:
                item["properties"]["instanceView"]["statuses"] = "PowerState/running"
        return self._page(request, items)

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
            if "virtualMachine" in self.nics[name]["properties"]:
                return self._error(400, "NicInUse", "The network interface is in use by a VM.")
            del self.nics[name]
            return Response(status=200)
        if name not in self.nics:
            return self._error(404, "NotFound", f"Resource {name} not found.")
        return Response.of_json(self.nics[name])

    def _put_nic(self, name: str, body: dict[str, Any], *, subnet: str = "") -> dict[str, Any]:
        if name not in self.nics:
            configs = (body.get("properties") or {}).get("ipConfigurations") or [{}]
            subnet = subnet or (configs[0].get("properties") or {}).get("subnet", {}).get("id", "")
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
