"""Local rate limit config: LocalRateLimit parsing, rejections by path, per-route config, the
token bucket, the stats scope."""

from __future__ import annotations

import asyncio

import pytest

from config import model
from filters.api import LocalReply
from filters.http.local_ratelimit.factory import (BucketSpec, LocalRateLimitConfig, Percent,
                                                  TokenBucket)
from filters.http.local_ratelimit.filter import LocalRateLimitFilter
from filters.registry import http_filter_factory
from sidecar.http.message import Request, Response
from sidecar.http.route_table import RouteTable
from sidecar.stats import HttpStats, LocalRateLimitStats, StatsStore
from tests.filters.filter_support import filter_listener, route
from tests.filters.test_local_ratelimit_integration import LRL, NAME, lrl
from tests.support.proxy import bootstrap, static_cluster
from tests.config.test_translate import errors_of as config_errors, translate


FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
TYPED = f"{FILTER}.http_filters[0].typed_config"
UNSUPPORTED = "not supported by sidecar yet (see docs/compatibility.md)"


def config_of(lrl_config: dict, routes: list | None = None) -> dict:
    return bootstrap([filter_listener("web", [(NAME, lrl_config)], routes=routes)],
                     [static_cluster("up", 9)])


def parsed(lrl_config: dict) -> LocalRateLimitConfig:
    hcm = translate(config_of(lrl_config)).listeners[0].filter_chain.filter
    return hcm.http_filters[0].config


def errors_of(lrl_config: dict) -> list[str]:
    return config_errors(config_of(lrl_config))


def test_registered_by_name_and_type_url():
    assert http_filter_factory(NAME, "") is http_filter_factory("", LRL) is not None


def test_parse():
    c = parsed(lrl("p", max_tokens=3, per_fill=2, interval="0.5s", status={"code": 503},
                   response_headers_to_add=[{"header": {"key": "X-A", "value": "1"},
                                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                   rate_limited_as_resource_exhausted=True,
                   local_rate_limit_per_downstream_connection=False))
    assert c.stat_prefix == "p"
    assert c.bucket_spec == BucketSpec(3, 2, 0.5)
    assert c.filter_enabled == c.filter_enforced == Percent(100, 100)
    assert c.status == 503 and c.resource_exhausted
    assert c.response_headers == model.HeaderMutations(
        (model.HeaderValueOption("x-a", "1", "OVERWRITE_IF_EXISTS_OR_ADD"),))
    assert c.bucket is not None
    d = parsed({"@type": LRL, "stat_prefix": "d", "token_bucket": {"max_tokens": 1,
                                                                 "fill_interval": "1s"}})
    assert d.filter_enabled is None and d.filter_enforced is None and d.status == 429
    assert d.bucket_spec == BucketSpec(1, 1, 1.0)


@pytest.mark.parametrize("fields,error", [
    ({"stat_prefix": ""}, f"{TYPED}.stat_prefix: value length must be at least 1 characters"),
    ({"descriptors": [{"entries": [{"key": "k", "value": "v"}],
                       "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]},
     f"{TYPED}.descriptors: {UNSUPPORTED}"),
    ({"enable_x_ratelimit_headers": "DRAFT_VERSION_03"},
     f"{TYPED}.enable_x_ratelimit_headers: {UNSUPPORTED}"),
    ({"local_rate_limit_per_downstream_connection": True},
     f"{TYPED}.local_rate_limit_per_downstream_connection: a token bucket per downstream"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}},
     f"{TYPED}.token_bucket.fill_interval: local rate limit token bucket fill timer must be >= 50ms"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "0s"}},
     f"{TYPED}.token_bucket.fill_interval: value must be greater than 0s"),
    ({"token_bucket": {"max_tokens": 0, "fill_interval": "1s"}},
     f"{TYPED}.token_bucket.max_tokens: value must be greater than 0"),
    ({"response_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}]},
     f"{TYPED}.response_headers_to_add[0].header.value: header formatters"),
    ({"filter_enabled": {"default_value": {"numerator": 1, "denominator": 7}}},
     f"{TYPED}.filter_enabled.default_value.denominator: value must be one of the defined"),
])
def test_rejections_name_the_field(fields, error):
    errors = errors_of({"@type": LRL, "stat_prefix": "p", **fields})
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_per_route_config_is_parsed_with_its_own_bucket():
    snapshot = translate(config_of(lrl("filter"), routes=[
        route("/a", typed_per_filter_config={NAME: lrl("a", max_tokens=1)}), route("/")]))
    hcm = snapshot.listeners[0].filter_chain.filter
    entry = RouteTable(hcm.route_config).select("example.com", "/a", "GET", [], "http")
    per_route = entry.per_filter_config[NAME]
    assert isinstance(per_route, LocalRateLimitConfig) and per_route.stat_prefix == "a"
    assert per_route.bucket is not hcm.http_filters[0].config.bucket


def test_token_bucket_refills_continuously_up_to_max_tokens():
    now = [0.0]
    bucket = TokenBucket(2, 2, 1.0, clock=lambda: now[0])
    assert [bucket.consume() for _ in range(3)] == [True, True, False]
    now[0] = 0.25      # half a token
    assert not bucket.consume()
    now[0] = 0.5       # one token
    assert bucket.consume() and not bucket.consume()
    now[0] = 100.0     # capped at max_tokens
    assert [bucket.consume() for _ in range(3)] == [True, True, False]


def test_stats_scope_is_shared_by_stat_prefix_and_rendered_once():
    store = StatsStore()
    a, b = store.http_scope("a"), store.http_scope("b")
    one = LocalRateLimitStats.shared(a, "shared_prefix")
    assert LocalRateLimitStats.shared(b, "shared_prefix") is one
    one.ok += 2
    dotted = [(k, v) for k, v, _ in store.dotted() if "shared_prefix" in k]
    assert ("shared_prefix.http_local_rate_limit.ok", 2) in dotted
    assert len(dotted) == 5
    text = store.prometheus_text()
    assert text.count('envoy_http_local_rate_limit_ok{envoy_local_http_ratelimit_prefix='
                      '"shared_prefix"} 2') == 1


def test_filter_not_enforced_draw_and_per_route_disabled():
    config = parsed(lrl("unit", max_tokens=1, interval="60s",
                        enforced={"default_value": {"numerator": 50}}))
    http = HttpStats("unit_hcm")
    draws = iter([10, 70])     # enforced: 10 < 50 yes, 70 no
    f = LocalRateLimitFilter(config, NAME, http, randrange=lambda n: next(draws))
    seen: list[Request] = []

    async def upstream(request: Request) -> Response:
        seen.append(request)
        return Response(200, [])

    def request() -> Request:
        return Request("GET", "/", "h", "http", [], None)

    async def run() -> list[object]:
        out: list[object] = []
        for _ in range(3):
            try:
                out.append((await f(request(), upstream)).status)
            except LocalReply as reply:
                out.append((reply.status, reply.flag, reply.details))
        return out

    assert asyncio.run(run()) == [200, (429, "RL", "local_rate_limited"), 200]
    stats = LocalRateLimitStats.shared(http, "unit")
    assert (stats.enabled, stats.ok, stats.rate_limited, stats.enforced) == (3, 1, 2, 1)
