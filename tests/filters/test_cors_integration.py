"""The CORS filter side by side: the same bootstrap under sidecar and the real Envoy 1.40, and
every assertion must hold for both (the expectations are Envoy's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.filters.filter_support import FILTER_CONFIG, KINDS, filter_listener, get, route
from tests.support.client import Result
from tests.support.proxy import ProxyProcess, bootstrap, static_cluster, vhost
from tests.support.upstream import Received, Reply, Upstream

CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
NAME = "envoy.filters.http.cors"
ALLOWED = "https://a.example"
OFF = {"default_value": {"numerator": 0}}
ON = {"default_value": {"numerator": 100}}
PREFLIGHT = {"Origin": ALLOWED, "Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "x-req"}


def policy(**fields: Any) -> dict[str, Any]:
    return {NAME: {"@type": POLICY, **fields}}


def cors_vhosts() -> list[dict[str, Any]]:
    main = policy(allow_origin_string_match=[{"exact": ALLOWED}, {"suffix": ".b.example"}],
                  allow_methods="GET, POST", allow_headers="x-h, content-type",
                  expose_headers="x-e", max_age="600", allow_credentials=True)
    routes = [
        route("/star", typed_per_filter_config=policy(allow_methods="*", allow_headers="*")),
        route("/off", typed_per_filter_config=policy(filter_enabled=OFF)),
        route("/shadow", typed_per_filter_config=policy(filter_enabled=OFF, shadow_enabled=ON)),
        route("/no-forward", typed_per_filter_config=policy(forward_not_matching_preflights=False)),
        route("/pna", typed_per_filter_config=policy(allow_private_network_access=True)),
        route("/plain", typed_per_filter_config=policy(
            allow_credentials=False, expose_headers="x-other")),
        route("/disabled", typed_per_filter_config={
            NAME: {"@type": FILTER_CONFIG, "disabled": True}}),
        route("/"),
    ]
    return [vhost(routes, ["example.com"], "main", typed_per_filter_config=main),
            vhost([route("/")], ["none.example"], "none"),
            vhost([route("/", typed_per_filter_config=policy(
                allow_origin_string_match=[{"exact": "*"}]))], ["any.example"], "any")]


def upstream_reply(request: Received) -> Reply:
    headers = [("content-type", "text/plain")]
    if request.target.startswith("/upstream-cors"):
        headers.append(("access-control-allow-origin", "https://upstream.example"))
    return Reply(200, headers, f"{request.method} {request.target}".encode())


def cors_config(port: int) -> dict:
    return bootstrap([filter_listener("cors", [(NAME, {"@type": CORS})], vhosts=cors_vhosts())],
                     [static_cluster("up", port)])


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with Upstream(upstream_reply) as up:
        with ProxyProcess(cors_config(up.port), kind=request.param) as p:
            p.upstream = up
            yield p


def send(proxy, path: str, method: str = "GET", host: str = "example.com",
         **headers: str) -> tuple[Result, bool]:
    """The response and whether the request reached the upstream."""
    before = len(proxy.upstream.requests)
    r = get(proxy, "cors", path, method=method, host=host, headers=headers)
    return r, len(proxy.upstream.requests) > before


def cors_headers(r: Result) -> dict[str, str]:
    return {k: v for k, v in r.headers if k.startswith("access-control-")}


def cors_stats(proxy) -> dict[str, int]:
    return {k.rsplit(".", 1)[1]: v for k, v in proxy.stats().items()
            if k.startswith("http.cors.cors.")}


FULL_PREFLIGHT = {
    "access-control-allow-origin": ALLOWED, "access-control-allow-credentials": "true",
    "access-control-allow-methods": "GET, POST", "access-control-allow-headers": "x-h, content-type",
    "access-control-max-age": "600", "access-control-expose-headers": "x-e"}


def test_preflight_of_an_allowed_origin_is_answered_here(proxy):
    r, forwarded = send(proxy, "/p", "OPTIONS", **PREFLIGHT)
    assert (r.status, r.body, forwarded) == (200, b"", False)
    assert r.header("content-length") == "0" and r.header("content-type") is None
    assert cors_headers(r) == FULL_PREFLIGHT
    r, forwarded = send(proxy, "/p", "OPTIONS", **{**PREFLIGHT, "Origin": "https://x.b.example"})
    assert not forwarded
    assert r.header("access-control-allow-origin") == "https://x.b.example"


def test_preflight_wildcards_echo_the_request(proxy):
    r, _ = send(proxy, "/star", "OPTIONS", **PREFLIGHT)
    assert r.header("access-control-allow-methods") == "PUT"
    assert r.header("access-control-allow-headers") == "x-req"
    assert r.header("access-control-max-age") == "600"     # from the virtual host's policy


def test_preflight_of_a_denied_origin_is_forwarded_by_default(proxy):
    r, forwarded = send(proxy, "/p", "OPTIONS", **{**PREFLIGHT, "Origin": "https://evil.example"})
    assert (r.status, r.body, forwarded) == (200, b"OPTIONS /p", True)
    assert cors_headers(r) == {}
    r, forwarded = send(proxy, "/no-forward", "OPTIONS",
                        **{**PREFLIGHT, "Origin": "https://evil.example"})
    assert (r.status, forwarded) == (200, False)
    assert cors_headers(r) == {k: v for k, v in FULL_PREFLIGHT.items() if k not in (
        "access-control-allow-origin", "access-control-expose-headers")}


def test_private_network_access(proxy):
    r, _ = send(proxy, "/pna", "OPTIONS", **PREFLIGHT,
                **{"Access-Control-Request-Private-Network": "true"})
    assert r.header("access-control-allow-private-network") == "true"
    r, _ = send(proxy, "/p", "OPTIONS", **PREFLIGHT,
                **{"Access-Control-Request-Private-Network": "true"})
    assert r.header("access-control-allow-private-network") is None


def test_simple_requests(proxy):
    r, forwarded = send(proxy, "/s", Origin=ALLOWED)
    assert forwarded and r.body == b"GET /s"
    assert cors_headers(r) == {"access-control-allow-origin": ALLOWED,
                               "access-control-allow-credentials": "true",
                               "access-control-expose-headers": "x-e"}
    for headers in ({"Origin": "https://evil.example"}, {}):
        r, forwarded = send(proxy, "/s", **headers)
        assert forwarded and cors_headers(r) == {}
    # OPTIONS without Access-Control-Request-Method and HEAD are not preflights.
    for method in ("OPTIONS", "HEAD"):
        r, forwarded = send(proxy, "/p", method, Origin=ALLOWED)
        assert forwarded and r.header("access-control-allow-origin") == ALLOWED


def test_credentials_and_expose_headers_per_route(proxy):
    r, _ = send(proxy, "/plain", Origin=ALLOWED)
    # allow_credentials false is set on the route: it wins over the virtual host's true.
    assert cors_headers(r) == {"access-control-allow-origin": ALLOWED,
                               "access-control-expose-headers": "x-other"}


def test_the_allowed_origin_replaces_the_upstreams(proxy):
    r, _ = send(proxy, "/upstream-cors", Origin=ALLOWED)
    assert [v for k, v in r.headers if k == "access-control-allow-origin"] == [ALLOWED]
    r, _ = send(proxy, "/upstream-cors", Origin="https://evil.example")
    assert r.header("access-control-allow-origin") == "https://upstream.example"


def test_a_star_matcher_allows_every_origin(proxy):
    r, _ = send(proxy, "/x", host="any.example", Origin="https://whoever.example")
    assert r.header("access-control-allow-origin") == "https://whoever.example"


@pytest.mark.parametrize("host,path", [("none.example", "/s"), ("example.com", "/off"),
                                       ("example.com", "/shadow"), ("example.com", "/disabled")])
def test_no_enabled_policy_leaves_the_request_alone(proxy, host, path):
    r, forwarded = send(proxy, path, host=host, Origin=ALLOWED)
    assert forwarded and cors_headers(r) == {}
    r, forwarded = send(proxy, path, "OPTIONS", host=host, **PREFLIGHT)
    assert forwarded and cors_headers(r) == {}


def test_stats_count_origins_of_enabled_and_shadow_policies(proxy):
    before = cors_stats(proxy)
    assert set(before) == {"origin_valid", "origin_invalid"}
    send(proxy, "/s", Origin=ALLOWED)                               # valid
    send(proxy, "/p", "OPTIONS", **PREFLIGHT)                       # valid
    send(proxy, "/s", Origin="https://evil.example")                # invalid
    send(proxy, "/s")                                               # no origin: not counted
    send(proxy, "/shadow", Origin=ALLOWED)                          # shadow: counted
    send(proxy, "/off", Origin=ALLOWED)                             # off: not counted
    send(proxy, "/s", host="none.example", Origin=ALLOWED)          # no policy
    after = cors_stats(proxy)
    assert {k: after[k] - before[k] for k in after} == {"origin_valid": 3, "origin_invalid": 1}
    _, text = proxy.admin("/stats/prometheus")
    assert f'envoy_http_cors_origin_valid{{envoy_http_conn_manager_prefix="cors"}} ' \
           f'{after["origin_valid"]}' in text
