"""The header mutation filter side by side: the same bootstrap under sidecar and the real Envoy
1.40, and every assertion must hold for both (the expectations are Envoy's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.filters.filter_support import FILTER_CONFIG, KINDS, filter_listener, get, route
from tests.support.proxy import ProxyProcess, bootstrap, static_cluster, vhost
from tests.support.upstream import Received, Reply, Upstream

HM = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
HMR = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
NAME = "envoy.filters.http.header_mutation"


def append(key: str, value: str, action: str | None = None, **extra: Any) -> dict[str, Any]:
    option: dict[str, Any] = {"header": {"key": key, "value": value}, **extra}
    if action:
        option["append_action"] = action
    return {"append": option}


def tagged(tag: str) -> dict[str, Any]:
    """Mutations that show their order: x-order appended, x-over overwritten (and for the
    response x-rorder / x-rover)."""
    return {"request_mutations": [append("x-order", tag),
                                  append("x-over", tag, "OVERWRITE_IF_EXISTS_OR_ADD")],
            "response_mutations": [append("x-rorder", tag),
                                   append("x-rover", tag, "OVERWRITE_IF_EXISTS_OR_ADD")]}


def hm(mutations: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": HM, **fields}
    if mutations is not None:
        config["mutations"] = mutations
    return config


def per_route(tag: str) -> dict[str, Any]:
    return {NAME: {"@type": HMR, "mutations": tagged(tag)}}


def levels_vhosts() -> list[dict[str, Any]]:
    routes = [route("/route", typed_per_filter_config=per_route("route")),
              route("/off", typed_per_filter_config={
                  NAME: {"@type": FILTER_CONFIG, "disabled": True}}),
              route("/")]
    return [vhost(routes, ["example.com"], "main", typed_per_filter_config=per_route("vhost")),
            vhost([route("/")], ["other.example"], "other")]


def upstream_reply(request: Received) -> Reply:
    return Reply(200, [("x-rorder", "up"), ("x-secret", "s"), ("content-type", "text/plain")],
                 b"ok")


def hm_config(port: int) -> dict:
    return bootstrap([
        filter_listener("basic", [(NAME, hm({
            "request_mutations": [
                {"remove": "x-gone"}, append("x-added", "a"), append("x-empty", ""),
                append("x-kept", "", keep_empty_value=True),
                append("x-if-absent", "new", "ADD_IF_ABSENT"),
                append("x-if-exists", "new", "OVERWRITE_IF_EXISTS"),
                append("x-not-there", "new", "OVERWRITE_IF_EXISTS"),
                append("x-twice", "1"), {"remove": "x-twice"}],
            "response_mutations": [{"remove": "x-secret"}, append("x-resp", "r")]}))],
            routes=[{"match": {"prefix": "/direct"},
                     "direct_response": {"status": 503, "body": {"inline_string": "d"}}},
                    route("/")]),
        filter_listener("levels", [(NAME, hm(tagged("filter")))], vhosts=levels_vhosts()),
        filter_listener("wins", [(NAME, hm(tagged("filter"),
                                           most_specific_header_mutations_wins=True))],
                        vhosts=levels_vhosts()),
        filter_listener("route-config", [(NAME, hm())], routes=[route("/")],
                        route_config_extra={"typed_per_filter_config": per_route("rc")}),
    ], [static_cluster("up", port)])


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with Upstream(upstream_reply) as up:
        with ProxyProcess(hm_config(up.port), kind=request.param) as p:
            p.upstream = up
            yield p


def seen(proxy, path: str) -> Received:
    (got,) = [r for r in proxy.upstream.requests if r.target == path]
    return got


def test_request_and_response_mutations(proxy):
    r = get(proxy, "basic", "/b", headers={"x-gone": "1", "x-if-absent": "old",
                                           "x-if-exists": "old", "x-twice": "0"})
    assert r.status == 200
    up = seen(proxy, "/b")
    assert up.header("x-gone") is None
    assert up.header_values("x-added") == ["a"]
    assert up.header("x-empty") is None               # empty values are dropped
    assert up.header_values("x-kept") == [""]
    assert up.header_values("x-if-absent") == ["old"]
    assert up.header_values("x-if-exists") == ["new"]
    assert up.header("x-not-there") is None
    assert up.header("x-twice") is None                # in order: the remove comes after
    assert r.header("x-secret") is None
    assert r.header("x-resp") == "r"
    assert r.header("x-rorder") == "up"


def test_response_mutations_apply_to_local_replies(proxy):
    r = get(proxy, "basic", "/direct")
    assert (r.status, r.body, r.header("x-resp")) == (503, b"d", "r")


@pytest.mark.parametrize("listener,host,path,order", [
    ("levels", "example.com", "/route", ["filter", "route", "vhost"]),
    ("levels", "example.com", "/x", ["filter", "vhost"]),
    ("levels", "other.example", "/x", ["filter"]),
    ("wins", "example.com", "/route", ["filter", "vhost", "route"]),
    ("wins", "example.com", "/x", ["filter", "vhost"]),
    ("route-config", "example.com", "/x", ["rc"]),
])
def test_per_route_mutations_follow_the_filters_own(proxy, listener, host, path, order):
    """Every level's per-route config applies after the filter's, the last one winning."""
    target = f"{path}/{listener}-{host}"
    r = get(proxy, listener, target, host=host)
    up = seen(proxy, target)
    assert up.header_values("x-order") == order
    assert up.header_values("x-over") == [order[-1]]
    assert [v for k, v in r.headers if k == "x-rorder"] == ["up", *order]
    assert r.header("x-rover") == order[-1]


def test_disabled_per_route_skips_the_filter(proxy):
    r = get(proxy, "levels", "/off")
    up = seen(proxy, "/off")
    assert up.header("x-order") is None and r.header("x-rover") is None
