"""Bootstrap -> model translation: what is accepted, and every rejection names its field path."""

from __future__ import annotations

import pytest

from config import model
from config.bootstrap import load_bootstrap, parse_message
from config.errors import ConfigError, ConfigErrors
from config.translate import translate_bootstrap
from filters.registry import http_filter_parser
from tests.support.proxy import bootstrap, http_listener, static_cluster, tcp_listener, vhost

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap


def translate(config: dict) -> model.Snapshot:
    snapshot, _ = translate_bootstrap(parse_message(config, Bootstrap), http_filter_parser)
    return snapshot


def errors_of(config: dict) -> list[str]:
    with pytest.raises((ConfigErrors, ConfigError)) as info:
        translate(config)
    e = info.value
    return [str(x) for x in e.errors] if isinstance(e, ConfigErrors) else [str(e)]


def basic(**hcm) -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    return bootstrap([http_listener("web", [vhost(routes)], port=8080, **hcm)],
                     [static_cluster("backend", 9000)])


def test_basic_http_listener_translates_to_model():
    snap = translate(basic())
    listener = snap.listeners[0]
    assert listener.address == model.SocketAddress("127.0.0.1", 8080)
    hcm = listener.filter_chain.filter
    assert isinstance(hcm, model.HttpConnectionManager)
    assert hcm.stat_prefix == "web"
    route = hcm.route_config.virtual_hosts[0].routes[0]
    assert route.match.kind == "prefix" and route.match.value == "/"
    assert isinstance(route.action, model.RouteAction)
    assert route.action.cluster == "backend"
    assert route.action.timeout == 15.0          # Envoy's default
    cluster = snap.clusters[0]
    assert cluster.endpoints[0].address == model.SocketAddress("127.0.0.1", 9000)
    assert cluster.connect_timeout == 1.0


def test_route_timeout_zero_disables_it():
    config = basic()
    route = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["timeout"] = "0s"
    snap = translate(config)
    assert snap.listeners[0].filter_chain.filter.route_config.virtual_hosts[0].routes[0].action.timeout is None


def test_unknown_field_is_rejected_with_its_path():
    config = basic()
    config["static_resources"]["clusters"][0]["bogus_field"] = 1
    with pytest.raises(ConfigError) as info:
        translate(config)
    assert info.value.path == "static_resources.clusters[0].bogus_field"


def test_unknown_field_inside_typed_config_names_the_path():
    config = basic(not_a_field=True)
    with pytest.raises(ConfigError) as info:
        translate(config)
    assert info.value.path == "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.not_a_field"


def test_unsupported_but_valid_envoy_field_fails_at_load_with_its_path():
    config = basic()
    config["static_resources"]["clusters"][0]["upstream_connection_options"] = {"tcp_keepalive": {}}
    assert errors_of(config) == [
        "static_resources.clusters[0].upstream_connection_options: not supported by sidecar yet "
        "(see docs/compatibility.md)"]


def test_every_error_is_reported_at_once():
    config = basic()
    config["static_resources"]["clusters"][0]["upstream_connection_options"] = {"tcp_keepalive": {}}
    config["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"
    errs = errors_of(config)
    assert len(errs) == 2
    assert any(e.startswith("static_resources.clusters[0].lb_policy:") for e in errs)


def test_unknown_http_filter_is_an_error_unless_optional():
    config = basic()
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"]
    filters.insert(0, {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "x"}}})
    errs = errors_of(config)
    assert errs == ["static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
                    ".http_filters[0]: HTTP filter 'envoy.filters.http.lua' "
                    "(type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua) is not "
                    "supported by sidecar"]
    filters[0]["is_optional"] = True
    snapshot, warnings = translate_bootstrap(parse_message(config, Bootstrap), http_filter_parser)
    assert len(snapshot.listeners[0].filter_chain.filter.http_filters) == 1
    assert "envoy.filters.http.lua" in warnings[0]


def test_route_to_unknown_cluster_is_rejected_when_validate_clusters_defaults_true():
    config = bootstrap([http_listener("web", [vhost([
        {"match": {"prefix": "/"}, "route": {"cluster": "missing"}}])])], [])
    assert errors_of(config) == ["static_resources.listeners[0].filter_chains[0].filters[0]"
                                 ".typed_config.route_config: route: unknown cluster 'missing'"]
    config = bootstrap([http_listener("web", [vhost([
        {"match": {"prefix": "/"}, "route": {"cluster": "missing"}}])],
        route_config_extra={"validate_clusters": False})], [])
    translate(config)   # accepted: the router answers 503 NC at request time


def test_bad_regex_names_the_field():
    config = bootstrap([http_listener("web", [vhost([
        {"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "b"}}])])],
        [static_cluster("b", 1)])
    errs = errors_of(config)
    assert len(errs) == 1 and errs[0].startswith(
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
        ".virtual_hosts[0].routes[0].match.safe_regex.regex: invalid RE2 regex")


def test_duplicate_domains_and_names_are_rejected():
    config = bootstrap([http_listener("web", [
        vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}], ["a.com"], "one"),
        vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}], ["a.com"], "two"),
    ])], [static_cluster("b", 1), static_cluster("b", 2)])
    errs = errors_of(config)
    assert any("duplicate entry of domain a.com" in e for e in errs)
    assert any("duplicate cluster name 'b'" in e for e in errs)


def test_weighted_clusters_total_weight_must_match():
    config = bootstrap([http_listener("web", [vhost([{"match": {"prefix": "/"}, "route": {
        "weighted_clusters": {"total_weight": 100, "clusters": [
            {"name": "a", "weight": 30}, {"name": "b", "weight": 30}]}}}])])],
        [static_cluster("a", 1), static_cluster("b", 2)])
    assert any("sum of weights (60) must equal total_weight (100)" in e for e in errors_of(config))


def test_tcp_proxy_and_ipv6_listener():
    config = bootstrap([tcp_listener("tcp", "b", port=7000, idle_timeout="10s")],
                       [static_cluster("b", 1)])
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "::1"
    snap = translate(config)
    tp = snap.listeners[0].filter_chain.filter
    assert isinstance(tp, model.TcpProxy) and tp.cluster == "b" and tp.idle_timeout == 10.0
    assert snap.listeners[0].address.is_ipv6


def test_static_cluster_needs_ip_addresses():
    config = basic()
    config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"]["address"] = "example.com"
    assert any("is not an IP address" in e for e in errors_of(config))


def test_config_yaml_merges_over_the_file_like_envoy(tmp_path):
    path = tmp_path / "b.yaml"
    import yaml
    path.write_text(yaml.safe_dump(basic()))
    merged = load_bootstrap(str(path), "node: {id: n1}\nstatic_resources: {clusters: [{name: extra, "
                                       "type: STATIC}]}")
    assert merged.node.id == "n1"
    # repeated fields are appended, as protobuf MergeFrom (Envoy's merge) does
    assert [c.name for c in merged.static_resources.clusters] == ["backend", "extra"]


def test_unreadable_file_and_bad_yaml_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_bootstrap(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_bootstrap(str(bad))


@pytest.mark.parametrize("duration", [{}, {"max_stream_duration": "2s"},
                                      {"grpc_timeout_header_max": "0s"}])
def test_max_stream_duration_makes_the_route_timeout_ignored(duration):
    """As Envoy 1.40 (its "new timeouts"): a route with max_stream_duration, even empty, has
    no route timeout (checked side by side in tests/integration/test_stream_duration.py)."""
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "3s",
                                                   "max_stream_duration": duration}},
              {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "3s"}}]
    config = bootstrap([http_listener("web", [vhost(routes)], port=8080)],
                       [static_cluster("backend", 9000)])
    vh = translate(config).listeners[0].filter_chain.filter.route_config.virtual_hosts[0]
    assert [r.action.timeout for r in vh.routes] == [None, 3.0]
