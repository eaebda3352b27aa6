"""The baseline for issue 20: a bare libcloud loop with no ledger and no checks.

One converge, run as its own process like `reconciler apply`: list the owned
instances, diff them with the desired fleet (services x count at one image), create
what is missing (tags at launch) with the same parallelism, wait until the new ones
run, then destroy what is surplus or of another image. What the API costs at the
least, so `bench_heal.py` can print ours/loop for each phase.

    .venv/bin/python benchmarks/bare_loop.py --endpoint URL --services 50 --count 2 \
        --image ami-... [--parallel 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from libcloud.compute.base import NodeImage, NodeSize
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NodeDriver
from libcloud.utils.xml import findtext

OWNER_TAG = "bench:owner"
SERVICE_TAG = "bench:service"
KEY, SECRET = "sandbox-access-key", "sandbox-secret-key"


def driver(endpoint: str) -> EC2NodeDriver:
    url = urlsplit(endpoint)
    return EC2NodeDriver(
        KEY, SECRET, region="us-east-1", host=url.hostname, port=url.port,
        secure=url.scheme == "https", signature_version="4",
    )  # fmt: skip


def listing(ec2: EC2NodeDriver, filters: dict[str, str]) -> list[Any]:
    """Every instance matching `filters`, all pages (libcloud's `list_nodes` reads one)."""
    nodes: list[Any] = []
    token = None
    while True:
        params = {"Action": "DescribeInstances", "MaxResults": "1000"}
        for n, (name, value) in enumerate(filters.items(), start=1):
            params[f"Filter.{n}.Name"], params[f"Filter.{n}.Value.1"] = name, value
        if token:
            params["NextToken"] = token
        body = ec2.connection.request(ec2.path, params=params).object
        nodes += ec2._to_nodes(body, "reservationSet/item/instancesSet/item")
        token = findtext(body, "nextToken", NAMESPACE)
        if not token:
            return nodes


def owned(ec2: EC2NodeDriver) -> list[Any]:
    nodes = listing(ec2, {f"tag:{OWNER_TAG}": "bench"})
    return [n for n in nodes if n.state in ("running", "pending")]


def converge(endpoint: str, *, services: int, count: int, image: str, parallel: int) -> None:
    ec2 = driver(endpoint)
    nodes = owned(ec2)
    by_service: dict[str, list[Any]] = {}
    for node in nodes:
        by_service.setdefault(node.extra["tags"].get(SERVICE_TAG, ""), []).append(node)
    creates: list[tuple[str, int]] = []
    destroys: list[Any] = []
    for n in range(services):
        name = f"svc{n:04d}"
        mine = by_service.pop(name, [])
        keep = [m for m in mine if m.extra.get("image_id") == image][:count]
        destroys += [m for m in mine if m not in keep]
        creates += [(name, slot) for slot in range(len(keep), count)]
    for leftover in by_service.values():
        destroys += leftover

    def create(item: tuple[str, int]) -> str:
        name, slot = item
        local = driver(endpoint)  # one connection per thread, as libcloud needs
        node = local.create_node(
            name=f"{name}-{slot}",
            image=NodeImage(id=image, name=image, driver=local),
            size=NodeSize(id="t3.micro", name="t3.micro", ram=0, disk=0, bandwidth=None,
                          price=0.0, driver=local),
            ex_metadata={OWNER_TAG: "bench", SERVICE_TAG: name},
        )
        return str(node.id)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        created = set(pool.map(create, creates))
    while created:
        running = {n.id for n in owned(ec2) if n.state == "running"}
        created -= running
        if created:
            time.sleep(0.1)

    def destroy(node: Any) -> None:
        driver(endpoint).destroy_node(node)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(destroy, destroys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--image", required=True)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    converge(args.endpoint, services=args.services, count=args.count, image=args.image,
             parallel=args.parallel)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
