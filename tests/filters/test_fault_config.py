"""Fault filter config: HTTPFault parsing, per-route typed_per_filter_config, rejections by path."""

from __future__ import annotations

import pytest

from config import model
from config.bootstrap import parse_message
from config.translate import translate_bootstrap
from filters.http.common import Percent
from filters.http.fault.factory import AbortFault, DelayFault, FaultConfig
from filters.registry import http_filter_factory, http_filter_parser
from sidecar.http.route_table import RouteTable
from tests.filters.fault_support import (FAULT, FAULT_NAME, FILTER_CONFIG, abort, fault,
                                         fault_bootstrap, fault_listener)
from tests.support.proxy import ROUTER, vhost
from tests.config.test_translate import errors_of

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
TYPED = f"{FILTER}.http_filters[0].typed_config"
ROUTE0 = f"{FILTER}.route_config.virtual_hosts[0].routes[0]"
UNSUPPORTED = "not supported by sidecar yet (see docs/compatibility.md)"


def translate(config: dict) -> tuple[model.Snapshot, list[str]]:
    """The snapshot and the translation's warnings."""
    return translate_bootstrap(parse_message(config, Bootstrap), http_filter_parser)


def parsed(fault_config: dict) -> FaultConfig:
    snapshot, _ = translate(fault_bootstrap(fault_listener("web", fault_config)))
    hcm = snapshot.listeners[0].filter_chain.filter
    assert isinstance(hcm, model.HttpConnectionManager)
    return hcm.http_filters[0].config


def fault_errors(fault_config: dict) -> list[str]:
    return errors_of(fault_bootstrap(fault_listener("web", fault_config)))


def test_registered_by_name_and_type_url():
    assert http_filter_factory(FAULT_NAME, "") is http_filter_factory("", FAULT)
    assert http_filter_factory("", FAULT) is not None


def test_fixed_delay_and_http_abort():
    config = parsed(fault(
        delay={"fixed_delay": "1.5s", "percentage": {"numerator": 25, "denominator": "TEN_THOUSAND"}},
        abort={"http_status": 418, "percentage": {"numerator": 3, "denominator": "MILLION"}},
        max_active_faults=7, downstream_nodes=["a", "b"],
        headers=[{"name": "X-Fault", "string_match": {"exact": "on"}}]))
    assert config.delay == DelayFault(1500, Percent(25, 10_000))
    assert config.abort == AbortFault(418, None, False, Percent(3, 1_000_000))
    assert config.max_active_faults == 7
    assert config.downstream_nodes == frozenset({"a", "b"})
    (matcher,) = config.headers
    assert matcher.name == "x-fault" and matcher.string is not None and matcher.string.match("on")


def test_header_controlled_and_grpc_faults():
    config = parsed(fault(delay={"header_delay": {}}, abort={"header_abort": {}}))
    assert config.delay == DelayFault(None, Percent(0, 100))     # unset percentage: 0%, as Envoy
    assert config.abort == AbortFault(None, None, True, Percent(0, 100))
    assert config.max_active_faults is None
    grpc = parsed(fault(abort={"grpc_status": 14, "percentage": {"numerator": 100}}))
    assert grpc.abort == AbortFault(None, 14, False, Percent(100, 100))


def test_empty_config_and_missing_typed_config_inject_nothing():
    assert parsed(fault()) == FaultConfig()
    snapshot, _ = translate(fault_bootstrap(fault_listener("web", None)))
    hcm = snapshot.listeners[0].filter_chain.filter
    assert hcm.http_filters[0].config is None


def test_sub_millisecond_delay_is_accepted_as_zero():
    assert parsed(fault(delay={"fixed_delay": "0.0001s"})).delay == DelayFault(0, Percent())


def test_runtime_keys_and_downstream_cluster_stats_switch_are_accepted():
    config = parsed(fault(abort={"http_status": 503}, delay_percent_runtime="a",
                          abort_percent_runtime="b", delay_duration_runtime="c",
                          abort_http_status_runtime="d", abort_grpc_status_runtime="e",
                          max_active_faults_runtime="f", response_rate_limit_percent_runtime="g",
                          disable_downstream_cluster_stats=True))
    assert config.abort is not None and config.abort.http_status == 503


@pytest.mark.parametrize("fields,error", [
    ({"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}},
     f"{TYPED}.response_rate_limit: {UNSUPPORTED}"),
    ({"filter_metadata": {"k": "v"}}, f"{TYPED}.filter_metadata: {UNSUPPORTED}"),
    ({"abort": {"http_status": 600}},
     f"{TYPED}.abort.http_status: value must be inside range [200, 600)"),
    ({"abort": {"http_status": 199}},
     f"{TYPED}.abort.http_status: value must be inside range [200, 600)"),
    ({"abort": {"percentage": {"numerator": 1}}},
     f"{TYPED}.abort: one of http_status, grpc_status or header_abort is required"),
    ({"delay": {"percentage": {"numerator": 1}}},
     f"{TYPED}.delay: one of fixed_delay or header_delay is required"),
    ({"delay": {"fixed_delay": "0s"}}, f"{TYPED}.delay.fixed_delay: value must be greater than 0s"),
    ({"delay": {"fixed_delay": "-1s"}}, f"{TYPED}.delay.fixed_delay: value must be greater than 0s"),
    ({"headers": [{"name": "x", "string_match": {"exact": "y"}, "invert_match": True},
                  {"name": "x", "string_match": {"safe_regex": {"regex": "("}}}]},
     f"{TYPED}.headers[1].string_match.safe_regex.regex: invalid RE2 regex"),
])
def test_rejections_name_the_field(fields, error):
    errors = fault_errors(fault(**fields))
    assert len(errors) == 1 and errors[0].startswith(error), errors


def route_config_with(per_filter: dict, level: str = "route") -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    if level == "route":
        routes[0]["typed_per_filter_config"] = per_filter
    vh = vhost(routes)
    if level == "vhost":
        vh["typed_per_filter_config"] = per_filter
    config = fault_bootstrap(fault_listener("web", fault(), vhosts=[vh]))
    if level == "route_config":
        config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["typed_per_filter_config"] = per_filter
    return config


def route_table(config: dict) -> RouteTable:
    snapshot, _ = translate(config)
    hcm = snapshot.listeners[0].filter_chain.filter
    return RouteTable(hcm.route_config)


def test_per_filter_config_at_each_level_is_parsed_by_the_filters_factory():
    for level in ("route", "vhost", "route_config"):
        table = route_table(route_config_with({FAULT_NAME: abort(502)}, level))
        entry = table.select("example.com", "/", "GET", [], "http")
        assert entry is not None
        config = entry.per_filter_config[FAULT_NAME]
        assert isinstance(config, FaultConfig) and config.abort.http_status == 502, level


def test_most_specific_per_filter_config_wins():
    routes = [{"match": {"prefix": "/r"}, "route": {"cluster": "up"},
               "typed_per_filter_config": {FAULT_NAME: abort(504), "other": abort(500)}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    vh = vhost(routes, typed_per_filter_config={FAULT_NAME: abort(503)})
    config = fault_bootstrap(fault_listener("web", fault(), vhosts=[vh]))
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["typed_per_filter_config"] = {FAULT_NAME: abort(502), "global": abort(501)}
    table = route_table(config)
    specific = table.select("example.com", "/r", "GET", [], "http").per_filter_config
    assert {k: v.abort.http_status for k, v in specific.items()} == {
        FAULT_NAME: 504, "other": 500, "global": 501}
    general = table.select("example.com", "/x", "GET", [], "http").per_filter_config
    assert {k: v.abort.http_status for k, v in general.items()} == {FAULT_NAME: 503, "global": 501}


def test_filter_config_wrapper_config_and_disabled():
    table = route_table(route_config_with({
        "wrapped": {"@type": FILTER_CONFIG, "config": abort(505)},
        "off": {"@type": FILTER_CONFIG, "disabled": True}}))
    entry = table.select("example.com", "/", "GET", [], "http")
    assert entry.per_filter_config["wrapped"].abort.http_status == 505
    assert entry.per_filter_config["off"] is model.FILTER_DISABLED


def test_optional_per_filter_config_of_an_unknown_filter_is_skipped_with_a_warning():
    optional = {"@type": FILTER_CONFIG, "is_optional": True,
                "config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                           "disabled": True}}
    snapshot, warnings = translate(route_config_with({"lua": optional}))
    route = snapshot.listeners[0].filter_chain.filter.route_config.virtual_hosts[0].routes[0]
    assert route.typed_per_filter_config == ()
    assert warnings and "typed_per_filter_config[lua].config" in warnings[0]


@pytest.mark.parametrize("value,error", [
    ({"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
      "disabled": True},
     f"{ROUTE0}.typed_per_filter_config[x]: HTTP filter config "
     "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute for 'x' "
     "is not supported by sidecar"),
    ({"@type": ROUTER},
     f"{ROUTE0}.typed_per_filter_config[x]: The filter x doesn't support virtual host or "
     "route specific configurations"),
    ({"@type": FILTER_CONFIG},
     f"{ROUTE0}.typed_per_filter_config[x]: Empty route/virtual host per filter "
     "configuration for x filter"),
    ({"@type": FILTER_CONFIG, "config": {}},
     f"{ROUTE0}.typed_per_filter_config[x].config: enabling a filter per route"),
    ({"@type": FAULT, "filter_metadata": {"k": "v"}},
     f"{ROUTE0}.typed_per_filter_config[x].filter_metadata: {UNSUPPORTED}"),
    ({"@type": FILTER_CONFIG, "config": {"@type": FAULT, "abort": {"http_status": 100}}},
     f"{ROUTE0}.typed_per_filter_config[x].config.abort.http_status: value must be inside range"),
])
def test_per_filter_config_rejections_name_the_path(value, error):
    errors = errors_of(route_config_with({"x": value}))
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_weighted_cluster_per_filter_config_stays_unsupported():
    routes = [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "up", "weight": 1, "typed_per_filter_config": {FAULT_NAME: abort()}}]}}}]
    errors = errors_of(fault_bootstrap(fault_listener("web", fault(), routes)))
    assert errors == [f"{ROUTE0}.route.weighted_clusters.clusters[0].typed_per_filter_config: "
                      f"{UNSUPPORTED}"]


def test_rds_route_configuration_carries_per_filter_config():
    from google.protobuf import any_pb2

    from envoy.config.route.v3.route_pb2 import RouteConfiguration
    from sidecar.xds.resources import ROUTE, translate as translate_resource
    rc = parse_message({"name": "rds", "virtual_hosts": [vhost(
        [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
        typed_per_filter_config={FAULT_NAME: abort(502)})]}, RouteConfiguration)
    packed = any_pb2.Any()
    packed.Pack(rc)
    result = translate_resource(ROUTE, "rds", packed)
    (name, config), = result.virtual_hosts[0].typed_per_filter_config
    assert name == FAULT_NAME and config.abort.http_status == 502
    bad = parse_message({"name": "rds", "virtual_hosts": [vhost(
        [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
        typed_per_filter_config={FAULT_NAME: fault(filter_metadata={"k": "v"})})]},
        RouteConfiguration)
    packed.Pack(bad)
    with pytest.raises(ValueError, match=r"virtual_hosts\[0\]\.typed_per_filter_config\["
                                         r"envoy\.filters\.http\.fault\]\.filter_metadata"):
        translate_resource(ROUTE, "rds", packed)
