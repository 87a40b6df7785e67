"""use_downstream_protocol_config: translation into the model, and the cluster's per-host
pair of pools (sidecar/upstream/pool_dual.py): each kind made on first use, one host to
admin /clusters, replaced when a CDS update changes the cluster's protocol."""

from __future__ import annotations

import pytest

from config import model
from sidecar.http.message import Request
from sidecar.stats import StatsStore
from sidecar.upstream.cluster import ClusterManager
from sidecar.upstream.pool import Http1Pool
from sidecar.upstream.pool_dual import DualPool, upstream_http2
from sidecar.upstream.pool_h2 import Http2Pool
from tests.config.test_translate import errors_of, translate
from tests.support.proxy import bootstrap, http_listener, static_cluster, vhost

OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def config_with(options: dict) -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "both"}}]
    return bootstrap([http_listener("web", [vhost(routes)], port=8080)],
                     [static_cluster("both", 9000, typed_extension_protocol_options={OPTIONS: {
                         "@type": f"type.googleapis.com/{OPTIONS}", **options}})])


def test_use_downstream_protocol_config_translates():
    cluster = translate(config_with({"use_downstream_protocol_config": {
        "http_protocol_options": {},
        "http2_protocol_options": {"max_concurrent_streams": 7}}})).clusters[0]
    assert cluster.downstream_protocol
    assert not cluster.http2            # not every request: only the HTTP/2 ones
    assert cluster.http2_options == model.UpstreamHttp2(max_concurrent_streams=7)


def test_use_downstream_protocol_config_without_http2_options_has_envoys_defaults():
    cluster = translate(config_with({"use_downstream_protocol_config": {}})).clusters[0]
    assert cluster.downstream_protocol
    assert cluster.http2_options == model.UpstreamHttp2()


def test_use_downstream_protocol_config_rejects_what_it_cannot_do():
    errors = errors_of(config_with({"use_downstream_protocol_config": {
        "http3_protocol_options": {}}}))
    assert any(e.startswith("static_resources.clusters[0].typed_extension_protocol_options"
                            f"[{OPTIONS}].use_downstream_protocol_config.http3_protocol_options")
               for e in errors), errors


def request(version: str) -> Request:
    return Request("GET", "/", "example.com", "http", [], None, version)


def test_requests_pick_their_protocol():
    both = model.Cluster("both", http2_options=model.UpstreamHttp2(), downstream_protocol=True)
    h2_only = model.Cluster("h2", http2_options=model.UpstreamHttp2())
    h1_only = model.Cluster("h1")
    assert [upstream_http2(c, request("1.1")) for c in (both, h2_only, h1_only)] == [False, True, False]
    assert [upstream_http2(c, request("2")) for c in (both, h2_only, h1_only)] == [True, True, False]


def cluster_config(**kw) -> model.Cluster:
    return model.Cluster("both", endpoints=(model.Endpoint(model.SocketAddress("127.0.0.1", 9000)),),
                         **kw)


def test_pools_are_made_on_first_use_and_counted_as_one_host():
    manager = ClusterManager(StatsStore(), lambda: None)
    manager.put(cluster_config(http2_options=model.UpstreamHttp2(max_concurrent_streams=3),
                               downstream_protocol=True))
    runtime = manager.get("both")
    host = runtime.hosts[0]
    pool = host.pool
    assert type(pool) is DualPool
    assert pool.pools() == []               # nothing made before a request needs it
    h1 = pool.http1()
    assert type(h1) is Http1Pool and pool.http1() is h1 and h1.breaker is runtime
    assert pool.pools() == [h1]
    h2 = pool.http2()
    assert type(h2) is Http2Pool and h2.max_streams == 3 and h2.breaker is runtime
    h1.cx_total, h2.cx_total, h1.rq_total, h2.rq_total = 1, 2, 3, 4
    assert (pool.cx_total, pool.rq_total) == (3, 7)
    from sidecar.admin.clusters import host_stats
    assert host_stats(host)["cx_total"] == 3 and host_stats(host)["rq_total"] == 7
    manager.close()
    assert h1.closed and h2.closed


@pytest.mark.parametrize("before, after, kind", [
    ({}, {"http2_options": model.UpstreamHttp2(), "downstream_protocol": True}, DualPool),
    ({"http2_options": model.UpstreamHttp2(), "downstream_protocol": True}, {}, Http1Pool),
    ({"http2_options": model.UpstreamHttp2(), "downstream_protocol": True},
     {"http2_options": model.UpstreamHttp2()}, Http2Pool),
])
def test_a_cds_update_that_changes_the_protocol_replaces_the_pools(before, after, kind):
    manager = ClusterManager(StatsStore(), lambda: None)
    manager.put(cluster_config(**before))
    old = manager.get("both").hosts[0].pool
    manager.put(cluster_config(**after))
    new = manager.get("both").hosts[0].pool
    assert type(new) is kind and new is not old and old.closed
    # An update that keeps the protocol keeps the pool (warm connections survive).
    manager.put(cluster_config(**after))
    assert manager.get("both").hosts[0].pool is new
    manager.close()


def test_pools_made_after_a_cds_update_have_the_new_config():
    """A DualPool taken over by an updated cluster makes its pools from the new config, and
    they count against the new cluster's breakers."""
    manager = ClusterManager(StatsStore(), lambda: None)
    manager.put(cluster_config(http2_options=model.UpstreamHttp2(max_concurrent_streams=3),
                               downstream_protocol=True))
    pool = manager.get("both").hosts[0].pool
    manager.put(cluster_config(http2_options=model.UpstreamHttp2(max_concurrent_streams=9),
                               downstream_protocol=True, connect_timeout=2.5))
    runtime = manager.get("both")
    assert runtime.hosts[0].pool is pool
    h2, h1 = pool.http2(), pool.http1()
    assert (h2.max_streams, h2.breaker, h1.connect_timeout, h1.breaker) == (9, runtime, 2.5, runtime)
    manager.close()
