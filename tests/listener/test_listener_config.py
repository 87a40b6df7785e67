"""Listener and ORIGINAL_DST config: what is accepted, and rejections naming their field path
(messages as Envoy 1.40's --mode validate words them, where Envoy rejects the same)."""

from __future__ import annotations

import pytest

from config import model
from tests.config.test_translate import errors_of, translate
from tests.support.proxy import TCP_PROXY, address, bootstrap, static_cluster

LF = "type.googleapis.com/envoy.extensions.filters.listener."
L0 = "static_resources.listeners[0]"
C1 = "static_resources.clusters[1]"


def chain(**match: object) -> dict[str, object]:
    out: dict[str, object] = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": "t", "cluster": "c"}}]}
    if match:
        out["filter_chain_match"] = match
    return out


def config(listener: dict[str, object] | None = None, cluster: dict[str, object] | None = None
           ) -> dict[str, object]:
    lst = {"name": "l", "address": address(10000), "filter_chains": [chain()], **(listener or {})}
    clusters = [static_cluster("c", 1)]
    if cluster is not None:
        clusters.append({"name": "od", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                         **cluster})
    return bootstrap([lst], clusters)


def test_listener_filters_chains_and_original_dst_translate():
    snap = translate(config({
        "listener_filters": [{"name": n, "typed_config": {"@type": LF + t}} for n, t in (
            ("envoy.filters.listener.original_dst", "original_dst.v3.OriginalDst"),
            ("envoy.filters.listener.tls_inspector", "tls_inspector.v3.TlsInspector"),
            ("envoy.filters.listener.http_inspector", "http_inspector.v3.HttpInspector"))],
        "use_original_dst": True, "listener_filters_timeout": "0.5s",
        "continue_on_listener_filters_timeout": True,
        "filter_chains": [chain(destination_port=80, server_names=["*.a.com"],
                                prefix_ranges=[{"address_prefix": "10.1.2.3", "prefix_len": 8}]),
                          chain()],
        "default_filter_chain": chain()}, cluster={
        "cleanup_interval": "2s", "original_dst_lb_config": {"use_http_header": True,
                                                             "http_header_name": "x-dst"},
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}}))
    lst = snap.listeners[0]
    assert [f.kind for f in lst.listener_filters] == ["original_dst", "tls_inspector", "http_inspector"]
    assert lst.use_original_dst and lst.continue_on_listener_filters_timeout
    assert lst.listener_filters_timeout == 0.5
    assert len(lst.filter_chains) == 2 and lst.default_filter_chain is not None
    m = lst.filter_chains[0].match
    assert m is not None and m.destination_port == 80 and m.server_names == ("*.a.com",)
    assert str(m.prefix_ranges[0]) == "10.0.0.0/8"
    assert lst.filter_chains[1].match is None
    od = snap.clusters[1]
    assert od.type == "ORIGINAL_DST" and od.lb_policy == "CLUSTER_PROVIDED"
    assert od.original_dst == model.OriginalDst(True, "x-dst", 2.0)
    assert od.upstream_bind_address == "127.0.0.6"


def test_one_plain_chain_stays_on_the_fast_path():
    lst = translate(config()).listeners[0]
    assert lst.filter_chains == () and not lst.needs_accept_stage


@pytest.mark.parametrize("listener,error", [
    ({"listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}]},
     f"{L0}.listener_filters[0]: Didn't find a registered implementation for "
     "'envoy.filters.listener.tls_inspector' with type URL: ''"),
    ({"listener_filters": [{"name": "pp", "typed_config": {
        "@type": LF + "proxy_protocol.v3.ProxyProtocol"}}]},
     f"{L0}.listener_filters[0]: Didn't find a registered implementation for 'pp'"),
    ({"filter_chains": [chain(server_names=["a.com", "b.com"]), chain(server_names=["b.com"])]},
     f"{L0}.filter_chains[1]: error adding listener '127.0.0.1:10000': multiple filter chains "
     "with overlapping matching rules are defined"),
    ({"filter_chains": [chain(source_type="EXTERNAL")]},
     f"{L0}.filter_chains[0].filter_chain_match.source_type"),
    ({"filter_chains": [chain(server_names=["a*.com"])]},
     f"{L0}.filter_chains[0].filter_chain_match.server_names[0]: partial wildcards"),
    ({"filter_chains": [chain(prefix_ranges=[{"address_prefix": "10.0.0.1", "prefix_len": 33}])]},
     f"{L0}.filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len"),
    ({"filter_chains": [chain(direct_source_prefix_ranges=[{"address_prefix": "10.0.0.1"}])]},
     f"{L0}.filter_chains[0].filter_chain_match.direct_source_prefix_ranges: not supported"),
    ({"filter_chains": [], "default_filter_chain": chain(destination_port=80)},
     f"{L0}.default_filter_chain.filter_chain_match: the default filter chain takes no"),
    ({"transparent": True}, f"{L0}.transparent: not supported"),
    ({"listener_filters": [{"name": "h", "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"},
                            "filter_disabled": {"or_match": {"rules": [{"any_match": True}]}}}]},
     f"{L0}.listener_filters[0].filter_disabled.or_match.rules: value must contain at least 2"),
    ({"listener_filters": [{"name": "h", "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"},
                            "filter_disabled": {"destination_port_range": {"start": 80, "end": 80}}}]},
     f"{L0}.listener_filters[0].filter_disabled.destination_port_range: end must be greater"),
])
def test_listener_rejections(listener, error):
    assert any(e.startswith(error) for e in errors_of(config(listener))), errors_of(config(listener))


@pytest.mark.parametrize("cluster,error", [
    ({"lb_policy": "ROUND_ROBIN"}, f"{C1}.lb_policy: cluster: LB policy ROUND_ROBIN is not valid "
     "for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type "
     "'ORIGINAL_DST'"),
    ({"load_assignment": {"cluster_name": "od"}},
     f"{C1}.load_assignment: ORIGINAL_DST clusters must have no load assignment configured"),
    ({"original_dst_lb_config": {"http_header_name": "x"}},
     f"{C1}.original_dst_lb_config: ORIGINAL_DST cluster: invalid config http_header_name=x"),
    ({"original_dst_lb_config": {"upstream_port_override": 80}},
     f"{C1}.original_dst_lb_config.upstream_port_override: not supported"),
    ({"outlier_detection": {}}, f"{C1}.outlier_detection: not supported with ORIGINAL_DST"),
    ({"upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 7}}},
     f"{C1}.upstream_bind_config.source_address.port_value: only port 0"),
])
def test_original_dst_rejections(cluster, error):
    assert any(e.startswith(error) for e in errors_of(config(cluster=cluster)))


def test_cluster_provided_needs_original_dst():
    cfg = config()
    cfg["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"  # type: ignore[index]
    assert errors_of(cfg) == ["static_resources.clusters[0].lb_policy: cluster manager: cluster "
                              "provided LB specified but cluster 'c' did not provide one. Check "
                              "cluster documentation."]
