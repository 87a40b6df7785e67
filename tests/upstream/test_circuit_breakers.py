"""Circuit breakers, unit level: translation of circuit_breakers.thresholds, the retry
limit (max_retries or a retry budget), the circuit_breakers.default.* gauges, and the pool
handing a released connection to a request waiting at max_connections."""

from __future__ import annotations

import asyncio

import pytest

from config import model
from sidecar.codec.http1 import get_parsers
from sidecar.http.local_reply import LocalReply
from sidecar.stats import ClusterStats, StatsStore
from sidecar.upstream.cluster import ClusterRuntime
from sidecar.upstream.pool import Http1Pool
from tests.config.test_translate import basic, errors_of, translate


def with_breakers(breakers: dict) -> dict:
    config = basic()
    config["static_resources"]["clusters"][0]["circuit_breakers"] = breakers
    return config


def test_defaults_are_envoys():
    c = translate(basic()).clusters[0]
    assert (c.max_connections, c.max_pending_requests, c.max_requests, c.max_retries) == (
        1024, 1024, 1024, 3)
    assert c.retry_budget_percent is None and not c.track_remaining


def test_default_priority_thresholds_translate_high_is_accepted_and_unused():
    c = translate(with_breakers({"thresholds": [
        {"priority": "HIGH", "max_requests": 7},
        {"max_connections": 1, "max_pending_requests": 2, "max_requests": 3, "max_retries": 0,
         "track_remaining": True},
    ]})).clusters[0]
    assert (c.max_connections, c.max_pending_requests, c.max_requests, c.max_retries) == (
        1, 2, 3, 0)
    assert c.track_remaining


def test_retry_budget_defaults():
    c = translate(with_breakers({"thresholds": [{"retry_budget": {}}]})).clusters[0]
    assert c.retry_budget_percent == 20.0 and c.retry_budget_min_concurrency == 3


def test_unsupported_breaker_fields_name_their_path():
    assert errors_of(with_breakers({"per_host_thresholds": [{"max_connections": 1}]})) == [
        "static_resources.clusters[0].circuit_breakers.per_host_thresholds: not supported by "
        "sidecar yet (see docs/compatibility.md)"]
    assert errors_of(with_breakers({"thresholds": [{"retry_budget": {
        "budget_percent": {"value": 150}}}]})) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[0].retry_budget.budget_percent: "
        "value must be inside range [0, 100]"]


def runtime(**fields) -> ClusterRuntime:
    return ClusterRuntime(model.Cluster("c", **fields), ClusterStats("c"), lambda: None)


def test_retry_limit_is_max_retries_or_the_budget():
    assert runtime(max_retries=5).retry_limit() == 5
    budget = runtime(retry_budget_percent=50.0, retry_budget_min_concurrency=2)
    assert budget.retry_limit() == 2
    budget.stats.upstream_rq_active = 9
    budget.stats.upstream_rq_pending_active = 1
    assert budget.retry_limit() == 5


def test_gauges_render_under_circuit_breakers_default():
    store = StatsStore()
    c = ClusterRuntime(model.Cluster("c", max_requests=2, track_remaining=True),
                       store.cluster_scope("c"), lambda: None)
    c.stats.upstream_rq_active = 2
    dotted = {name: value for name, value, _ in store.dotted()}
    assert dotted["cluster.c.circuit_breakers.default.rq_open"] == 1
    assert dotted["cluster.c.circuit_breakers.default.remaining_rq"] == 0
    assert dotted["cluster.c.circuit_breakers.default.remaining_cx"] == 1024
    assert dotted["cluster.c.circuit_breakers.default.rq_retry_open"] == 0
    assert ("envoy_cluster_circuit_breakers_default_rq_open{envoy_cluster_name=\"c\"} 1"
            in store.prometheus_text())


def test_pool_hands_a_released_connection_to_a_pending_request():
    """A real upstream socket: the first request holds the only connection
    (max_connections 1), the second waits (pending), the third overflows."""
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = runtime(max_connections=1, max_pending_requests=1)
        pool = Http1Pool("127.0.0.1", port, c.stats, get_parsers()[1], 1.0, None, 0, 1024, c)
        try:
            conn = await pool.acquire()
            waiting = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0)
            assert c.stats.upstream_cx_overflow == 1 and c.stats.upstream_rq_pending_active == 1
            with pytest.raises(LocalReply) as overflow:     # beyond max_pending_requests
                await pool.acquire()
            assert overflow.value.flag == "UO" and c.stats.upstream_rq_pending_overflow == 1
            assert ("x-envoy-overloaded", "true") in overflow.value.headers
            pool.release(conn)
            assert await waiting is conn
            assert conn in pool.busy and not pool.idle and c.stats.upstream_rq_pending_active == 0
        finally:
            pool.close()
            server.close()

    asyncio.run(scenario())
