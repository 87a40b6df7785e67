"""Header mutation config: HeaderMutation / HeaderMutationPerRoute parsing, rejections by path."""

from __future__ import annotations

import pytest

from config import model
from filters.http.header_mutation.factory import (HeaderMutationConfig,
                                                  HeaderMutationPerRouteConfig, Mutations)
from filters.registry import http_filter_factory
from sidecar.http.route_table import RouteTable
from tests.filters.filter_support import filter_listener, route
from tests.filters.test_header_mutation_integration import HM, HMR, NAME, append, hm
from tests.support.proxy import bootstrap, static_cluster
from tests.config.test_translate import errors_of, translate


FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
TYPED = f"{FILTER}.http_filters[0].typed_config"
ROUTE0 = f"{FILTER}.route_config.virtual_hosts[0].routes[0]"
UNSUPPORTED = "not supported by sidecar yet (see docs/compatibility.md)"


def config_of(filter_config: dict, routes: list | None = None) -> dict:
    return bootstrap([filter_listener("web", [(NAME, filter_config)], routes=routes)],
                     [static_cluster("up", 9)])


def test_registered_by_name_and_both_type_urls():
    factory = http_filter_factory(NAME, "")
    assert factory is not None
    assert http_filter_factory("", HM) is factory and http_filter_factory("", HMR) is factory


def test_parse_in_order():
    hcm = translate(config_of(hm({
        "request_mutations": [{"remove": "X-A"}, append("x-b", "1", "ADD_IF_ABSENT")],
        "response_mutations": [append("x-c", "2")]},
        most_specific_header_mutations_wins=True))).listeners[0].filter_chain.filter
    config = hcm.http_filters[0].config
    assert config == HeaderMutationConfig(Mutations(
        request=(model.HeaderMutations(remove=("x-a",)),
                 model.HeaderMutations(add=(model.HeaderValueOption("x-b", "1", "ADD_IF_ABSENT"),))),
        response=(model.HeaderMutations(add=(model.HeaderValueOption("x-c", "2"),)),)), True)


def test_per_route_config():
    per_route = {"@type": HMR, "mutations": {"request_mutations": [append("x-r", "1")]}}
    hcm = translate(config_of(hm(), routes=[route("/", typed_per_filter_config={
        NAME: per_route})])).listeners[0].filter_chain.filter
    entry = RouteTable(hcm.route_config).select("example.com", "/", "GET", [], "http")
    assert entry.per_filter_config[NAME] == HeaderMutationPerRouteConfig(Mutations(
        request=(model.HeaderMutations(add=(model.HeaderValueOption("x-r", "1"),)),)))


@pytest.mark.parametrize("mutations,error", [
    ({"request_mutations": [{"remove_on_match": {"key_matcher": {"exact": "x"}}}]},
     f"{TYPED}.mutations.request_mutations[0].remove_on_match: {UNSUPPORTED}"),
    ({"query_parameter_mutations": [{"remove": "q"}]},
     f"{TYPED}.mutations.query_parameter_mutations: {UNSUPPORTED}"),
    ({"response_trailers_mutations": [{"remove": "t"}]},
     f"{TYPED}.mutations.response_trailers_mutations: {UNSUPPORTED}"),
    ({"request_mutations": [append("x", "%REQ(y)%")]},
     f"{TYPED}.mutations.request_mutations[0].append.header.value: header formatters"),
    ({"request_mutations": [append(":path", "/x")]},
     f"{TYPED}.mutations.request_mutations[0].append.header.key: :-prefixed or host headers"),
    ({"response_mutations": [{"remove": "host"}]},
     f"{TYPED}.mutations.response_mutations[0].remove: :-prefixed or host headers"),
    ({"request_mutations": [{}]},
     f"{TYPED}.mutations.request_mutations[0]: one of remove, append"),
])
def test_rejections_name_the_field(mutations, error):
    errors = errors_of(config_of(hm(mutations)))
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_the_other_type_is_unpacked_as_the_expected_one_as_envoy():
    """Envoy unpacks per-route config as HeaderMutationPerRoute and the filter's as
    HeaderMutation: a non-empty message of the other type is an error, an empty one passes."""
    mutations = {"request_mutations": [append("x", "1")]}
    errors = errors_of(config_of({"@type": HMR, "mutations": mutations}))
    assert errors == [f"{TYPED}: Unable to unpack as "
                      "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"]
    errors = errors_of(config_of(hm(), routes=[route("/", typed_per_filter_config={
        NAME: hm(mutations)})]))
    assert errors == [f"{ROUTE0}.typed_per_filter_config[{NAME}]: Unable to unpack as "
                      "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"]
    translate(config_of({"@type": HMR}, routes=[route("/", typed_per_filter_config={
        NAME: hm()})]))
