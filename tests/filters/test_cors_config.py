"""CORS config: Cors / CorsPolicy parsing, per-route levels, rejections by path, the filter
called directly."""

from __future__ import annotations

import asyncio

import pytest

from config.matchers import StringMatcher
from filters.api import LocalReply
from filters.http.cors.factory import CorsFilterConfig, CorsPolicyConfig
from filters.http.cors.filter import CorsFilter
from filters.http.common import Percent
from filters.registry import http_filter_factory
from sidecar.http.message import Request, Response
from sidecar.http.route_table import RouteTable
from sidecar.stats import CorsStats
from tests.filters.filter_support import filter_listener, route
from tests.filters.test_cors_integration import CORS, NAME, POLICY, policy
from tests.support.proxy import bootstrap, static_cluster, vhost
from tests.config.test_translate import errors_of, translate


FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
TYPED = f"{FILTER}.http_filters[0].typed_config"
ROUTE0 = f"{FILTER}.route_config.virtual_hosts[0].routes[0]"
UNSUPPORTED = "not supported by sidecar yet (see docs/compatibility.md)"


def config_of(filter_config: dict, routes: list | None = None,
              vhosts: list | None = None) -> dict:
    return bootstrap([filter_listener("web", [(NAME, filter_config)], routes=routes,
                                      vhosts=vhosts)], [static_cluster("up", 9)])


def table(config: dict) -> RouteTable:
    return RouteTable(translate(config).listeners[0].filter_chain.filter.route_config)


def test_registered_by_name_and_both_type_urls():
    factory = http_filter_factory(NAME, "")
    assert factory is not None
    assert http_filter_factory("", CORS) is factory and http_filter_factory("", POLICY) is factory


def test_policy_parse():
    entry = table(config_of({"@type": CORS}, routes=[route("/", typed_per_filter_config=policy(
        allow_origin_string_match=[{"prefix": "https://", "ignore_case": True}],
        allow_methods="GET", allow_headers="x", expose_headers="y", max_age="5",
        allow_credentials=False, filter_enabled={"default_value": {"numerator": 5}},
        forward_not_matching_preflights=True))])).select("example.com", "/", "GET", [], "http")
    assert entry.per_filter_config[NAME] == CorsPolicyConfig(
        allow_origins=(StringMatcher("prefix", "https://", True),), allow_methods="GET",
        allow_headers="x", expose_headers="y", max_age="5", allow_credentials=False,
        forward_not_matching_preflights=True, filter_enabled=Percent(5, 100))
    hcm = translate(config_of({"@type": CORS})).listeners[0].filter_chain.filter
    assert hcm.http_filters[0].config == CorsFilterConfig()


@pytest.mark.parametrize("fields,error", [
    ({"allow_origin_string_match": [{"safe_regex": {"regex": "("}}]},
     "allow_origin_string_match[0].safe_regex.regex: invalid RE2 regex"),
    ({"allow_origin_string_match": [{}]},
     "allow_origin_string_match[0]: one of exact, prefix, suffix, contains or safe_regex"),
    ({"filter_enabled": {"default_value": {"numerator": 1, "denominator": 9}}},
     "filter_enabled.default_value.denominator: value must be one of the defined enum values"),
])
def test_policy_rejections_name_the_field(fields, error):
    errors = errors_of(config_of({"@type": CORS}, routes=[
        route("/", typed_per_filter_config=policy(**fields))]))
    path = f"{ROUTE0}.typed_per_filter_config[{NAME}]"
    assert len(errors) == 1 and errors[0].startswith(f"{path}.{error}"), errors


def test_the_other_type_is_unpacked_as_the_expected_one_as_envoy():
    errors = errors_of(config_of({"@type": POLICY, "allow_methods": "GET"}))
    assert errors == [f"{TYPED}: Unable to unpack as envoy.extensions.filters.http.cors.v3.Cors"]
    translate(config_of({"@type": POLICY}, routes=[route("/", typed_per_filter_config={
        NAME: {"@type": CORS}})]))


def test_fields_come_from_the_most_specific_level_that_sets_them():
    vhosts = [vhost([route("/r", typed_per_filter_config=policy(allow_methods="PUT")),
                     route("/")], typed_per_filter_config=policy(
        allow_origin_string_match=[{"exact": "https://a"}], allow_methods="GET", max_age="9"))]
    routes = table(config_of({"@type": CORS}, vhosts=vhosts))
    stats = CorsStats("web")
    cors = CorsFilter(NAME, stats)

    async def upstream(request: Request) -> Response:
        return Response(200, [])

    async def preflight(path: str) -> dict[str, str]:
        request = Request("OPTIONS", path, "example.com", "http", [
            ("origin", "https://a"), ("access-control-request-method", "DELETE")], None)
        request.route = routes.select("example.com", path, "OPTIONS", request.headers, "http")
        with pytest.raises(LocalReply) as info:
            await cors(request, upstream)
        assert (info.value.status, info.value.details) == (200, "cors_response")
        return dict(info.value.headers)

    route_level = asyncio.run(preflight("/r"))
    assert route_level["access-control-allow-methods"] == "PUT"
    assert route_level["access-control-max-age"] == "9"
    assert route_level["access-control-allow-origin"] == "https://a"
    assert asyncio.run(preflight("/x"))["access-control-allow-methods"] == "GET"
    assert (stats.origin_valid, stats.origin_invalid) == (2, 0)
