"""Classic ELB adapter: libcloud's ElasticLBDriver behind the `LoadBalancerPort`.

Owns: the endpoint override libcloud's ELB driver lacks (it always talks to
elasticloadbalancing.<region>.amazonaws.com under the path /2012-06-01/; AWS accepts
the query API at "/", and so does the sandbox), membership and in-service queries.
Must not: create or delete load balancers — operators own those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libcloud.loadbalancer.base import Driver as LoadBalancerDriver
from libcloud.loadbalancer.drivers.elb import NS, ElasticLBDriver, ELBConnection
from libcloud.utils.xml import findall, findtext

from reconciler.errors import PluginError, ProviderError, TransientError
from reconciler.providers.ec2.adapter import translate_ec2_error
from reconciler.providers.endpoints import parse_endpoint

_MEMBERS = "DescribeLoadBalancersResult/LoadBalancerDescriptions/member/Instances/member"


class _RootPathConnection(ELBConnection):
    def request(self, action: str, *args: Any, **kwargs: Any) -> Any:
        return super().request("/", *args, **kwargs)


class _EndpointElbDriver(ElasticLBDriver):
    connectionCls = _RootPathConnection

    def __init__(self, key: str, secret: str, region: str, endpoint: str | None) -> None:
        self.token = None
        self.region = region
        self.region_name = region
        if endpoint is None:
            ElasticLBDriver.__init__(self, key, secret, region)
            return
        host, port, secure = parse_endpoint(endpoint)
        LoadBalancerDriver.__init__(
            self, key, secret, secure=secure, host=host, port=port, region=region
        )


class ElbBalancers:
    """The `LoadBalancerPort` of one EC2 region (or EC2-compatible endpoint)."""

    def __init__(self, *, key: str, secret: str, region: str, endpoint: str | None) -> None:
        self._driver: Any = _EndpointElbDriver(key, secret, region, endpoint)

    def _call(self, what: str, params: dict[str, str]) -> Any:
        try:
            return self._driver.connection.request("/", params=params).object
        except Exception as exc:  # translated at this edge, like the EC2 adapter
            error = translate_ec2_error(exc, what)
            if isinstance(error, (ProviderError, TransientError)):
                raise PluginError(f"load balancer: {error}") from None
            raise

    def members(self, balancer: str) -> set[str]:
        body = self._call(
            "DescribeLoadBalancers",
            {"Action": "DescribeLoadBalancers", "LoadBalancerNames.member.1": balancer},
        )
        return {findtext(item, "InstanceId", NS) for item in findall(body, _MEMBERS, NS)}

    def in_service(self, balancer: str) -> set[str]:
        body = self._call(
            "DescribeInstanceHealth",
            {"Action": "DescribeInstanceHealth", "LoadBalancerName": balancer},
        )
        states = findall(body, "DescribeInstanceHealthResult/InstanceStates/member", NS)
        return {
            findtext(s, "InstanceId", NS) for s in states if findtext(s, "State", NS) == "InService"
        }

    def attach(self, balancer: str, instance_ids: Sequence[str]) -> None:
        self._change("RegisterInstancesWithLoadBalancer", balancer, instance_ids)

    def detach(self, balancer: str, instance_ids: Sequence[str]) -> None:
        self._change("DeregisterInstancesFromLoadBalancer", balancer, instance_ids)

    def _change(self, action: str, balancer: str, instance_ids: Sequence[str]) -> None:
        params = {"Action": action, "LoadBalancerName": balancer}
        for n, instance_id in enumerate(instance_ids, start=1):
            params[f"Instances.member.{n}.InstanceId"] = instance_id
        self._call(action, params)
