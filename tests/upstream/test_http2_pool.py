"""The HTTP/2 upstream connection, its streams and pool (sidecar/upstream/http2.py,
http2_stream.py, pool_h2.py) against a real h2 server (tests/support/h2_upstream.py):
multiplexing within the server's max_concurrent_streams, more connections when saturated,
request bodies within flow-control windows, responses with trailers, resets, GOAWAY, refused
streams, timeouts, keepalive."""

from __future__ import annotations

import asyncio
import time

import h2.errors
import pytest

from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyStream
from sidecar.stats import ClusterStats
from sidecar.upstream.http1 import UpstreamClosed, UpstreamTimeout
from sidecar.upstream.http2_headers import request_headers
from sidecar.upstream.http2_stream import UpstreamRefused, UpstreamReset
from sidecar.upstream.pool_h2 import Http2Pool
from tests.support.h2_upstream import H2Received, H2Reply, H2Upstream
from tests.support.proxy import free_port


class Breaker:
    """The cluster side of the pool's circuit breakers (ClusterRuntime's attributes)."""

    def __init__(self, max_connections: int = 1024, max_pending_requests: int = 1024) -> None:
        self.max_connections = max_connections
        self.max_pending_requests = max_pending_requests
        self.connecting = 0
        self.stats: ClusterStats | None = None

    def connections(self) -> int:
        return self.stats.upstream_cx_active + self.connecting  # type: ignore[union-attr]


def make_pool(port: int, **kw) -> Http2Pool:
    stats = ClusterStats("h2")
    breaker = kw.pop("breaker", Breaker())
    breaker.stats = stats
    return Http2Pool("127.0.0.1", port, stats, connect_timeout=1.0, idle_timeout=kw.pop("idle", 30.0),
                     max_requests_per_connection=kw.pop("max_requests", 0),
                     buffer_limit=kw.pop("buffer_limit", 1024 * 1024), breaker=breaker, **kw)


def headers(path: str, method: str = "GET") -> list[tuple[str, str]]:
    return request_headers(method, path, "example.com", "http",
                           [("x-test", "1"), ("connection", "keep-alive"), ("te", "trailers")])


async def exchange(pool: Http2Pool, path: str, body: bytes = b"", method: str = "GET",
                   deadline: float | None = None, trailers=None):
    """One request: returns (status, headers, body bytes, trailers)."""
    stream = pool.take_idle() or await pool.acquire(deadline)
    waiter = stream.send_head(headers(path, method), end_stream=not body and trailers is None)
    if deadline is not None:
        stream.set_deadline(deadline)
    if body or trailers is not None:
        stream.write(body)
        stream.finish_request(trailers)
    head, response_body = await waiter
    response_trailers = None
    if type(response_body) is BodyStream:
        data = b"".join([chunk async for chunk in response_body])
        response_trailers = response_body.trailers
    else:
        data = response_body
    return head.status, head.headers, data, response_trailers


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_requests_multiplex_on_one_connection():
    with H2Upstream() as up:
        async def main():
            pool = make_pool(up.port)
            results = await asyncio.gather(*(exchange(pool, f"/r{i}") for i in range(20)))
            assert [r[2] for r in results] == [f"/r{i}".encode() for i in range(20)]
            assert all(r[0] == 200 for r in results)
            pool.close()
            return pool
        pool = run(main())
    assert up.connections == 1
    assert pool.stats.upstream_cx_http2_total == 1 and pool.rq_total == 20
    received = up.requests[0]
    assert received.header(":authority") == "example.com" and received.header(":scheme") == "http"
    assert received.header("connection") is None         # connection-specific: dropped
    assert received.header("te") == "trailers" and received.header("x-test") == "1"


def test_saturated_connection_opens_another_within_max_concurrent_streams():
    def slow(r: H2Received) -> H2Reply:
        return H2Reply(200, chunks=[b"ok"], delay=0.3)

    with H2Upstream(slow, max_concurrent_streams=2) as up:
        async def main():
            pool = make_pool(up.port)
            await exchange(pool, "/warm")         # the server's SETTINGS are known from here
            results = await asyncio.gather(*(exchange(pool, f"/r{i}") for i in range(6)))
            assert all(r[0] == 200 for r in results)
            pool.close()
        run(main())
    assert up.peak_active >= 2
    assert up.connections == 3        # 6 concurrent streams, 2 per connection


def test_max_connections_keeps_requests_pending_until_a_stream_frees():
    def slow(r: H2Received) -> H2Reply:
        return H2Reply(200, chunks=[b"ok"], delay=0.2)

    with H2Upstream(slow, max_concurrent_streams=1) as up:
        async def main():
            pool = make_pool(up.port, breaker=Breaker(max_connections=1))
            await exchange(pool, "/warm")
            results = await asyncio.gather(*(exchange(pool, f"/r{i}") for i in range(3)))
            assert all(r[0] == 200 for r in results)
            assert pool.stats.upstream_rq_pending_total >= 2
            pool.close()
        run(main())
    assert up.connections == 1 and up.peak_active == 1


def test_request_body_larger_than_the_window_and_trailers_both_ways():
    def grpc_like(r: H2Received) -> H2Reply:
        return H2Reply(200, [("content-type", "application/grpc")], [r.body[:10], r.body[10:]],
                       trailers=[("grpc-status", "0"), ("grpc-message", "ok")])

    body = bytes(range(256)) * 1024      # 256 KiB: four times the server's 64 KiB window
    with H2Upstream(grpc_like) as up:
        async def main():
            pool = make_pool(up.port)
            status, hdrs, data, trailers = await exchange(pool, "/grpc", body, "POST",
                                                          trailers=[("x-req-trailer", "t")])
            pool.close()
            return status, hdrs, data, trailers
        status, hdrs, data, trailers = run(main())
    assert status == 200 and data == body
    assert trailers == [("grpc-status", "0"), ("grpc-message", "ok")]
    assert up.requests[0].body == body


def test_upstream_reset_and_refused_stream():
    def script(r: H2Received) -> H2Reply:
        if r.path == "/refuse":
            return H2Reply(reset=h2.errors.ErrorCodes.REFUSED_STREAM)
        if r.path == "/reset":
            return H2Reply(reset=h2.errors.ErrorCodes.INTERNAL_ERROR)
        return H2Reply(200, chunks=[b"fine"])

    with H2Upstream(script) as up:
        async def main():
            pool = make_pool(up.port)
            with pytest.raises(UpstreamRefused):
                await exchange(pool, "/refuse")
            with pytest.raises(UpstreamReset) as info:
                await exchange(pool, "/reset")
            assert info.value.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
            assert pool.stats.upstream_rq_rx_reset == 1
            assert (await exchange(pool, "/ok"))[2] == b"fine"     # the connection still serves
            pool.close()
        run(main())
    assert up.connections == 1


def test_goaway_refuses_later_streams_and_drains_the_connection():
    def script(r: H2Received) -> H2Reply:
        if r.path == "/bye":
            return H2Reply(200, chunks=[b"last"], goaway=True)
        return H2Reply(200, chunks=[r.path.encode()])

    with H2Upstream(script) as up:
        async def main():
            pool = make_pool(up.port)
            assert (await exchange(pool, "/bye"))[2] == b"last"
            await asyncio.sleep(0.1)
            # The connection that said GOAWAY takes no new stream: a new one is opened.
            assert (await exchange(pool, "/after"))[2] == b"/after"
            pool.close()
        run(main())
    assert up.connections == 2


def test_route_deadline_resets_the_stream():
    def slow(r: H2Received) -> H2Reply:
        return H2Reply(200, chunks=[b"late"], delay=2)

    with H2Upstream(slow) as up:
        async def main():
            pool = make_pool(up.port)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(UpstreamTimeout):
                await exchange(pool, "/slow", deadline=loop.time() + 0.2)
            assert loop.time() - start < 1.0
            await asyncio.sleep(0.2)
            pool.close()
        run(main())
    assert len(up.resets) == 1          # the upstream saw the RST_STREAM (CANCEL)


def test_connect_failure_fails_every_pending_request_with_its_own_reply():
    async def main():
        pool = make_pool(free_port())
        results = await asyncio.gather(*(exchange(pool, f"/r{i}") for i in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, LocalReply) and r.flag == "UF" for r in results)
        assert len({id(r) for r in results}) == 3
        assert pool.stats.upstream_cx_connect_fail == 1
    run(main())


def test_connection_lost_fails_streams_in_flight():
    def slow(r: H2Received) -> H2Reply:
        return H2Reply(200, chunks=[b"late"], delay=5)

    up = H2Upstream(slow).__enter__()
    try:
        async def main():
            pool = make_pool(up.port)
            task = asyncio.ensure_future(exchange(pool, "/slow"))
            await asyncio.sleep(0.2)
            for conn in pool.connections:
                conn.transport.abort()
            with pytest.raises(UpstreamClosed):
                await task
            assert not pool.connections
        run(main())
    finally:
        up.__exit__(None, None, None)


def test_slow_reader_stops_acknowledging_data():
    """The response body is not acknowledged past the body stream's watermark: the upstream
    stalls on its window instead of the proxy buffering everything."""
    big = b"x" * (4 * 1024 * 1024)

    def large(r: H2Received) -> H2Reply:
        return H2Reply(200, chunks=[big[i:i + 16384] for i in range(0, len(big), 16384)])

    with H2Upstream(large) as up:
        async def main():
            pool = make_pool(up.port, stream_window=256 * 1024, buffer_limit=64 * 1024)
            stream = pool.take_idle() or await pool.acquire()
            waiter = stream.send_head(headers("/large"), end_stream=True)
            head, body = await waiter
            assert type(body) is BodyStream
            await asyncio.sleep(0.5)          # nobody reads
            held = sum(len(c) for c in body._chunks)
            assert held <= 256 * 1024 + 64 * 1024
            data = b"".join([chunk async for chunk in body])
            assert data == big
            pool.close()
        run(main())


def test_keepalive_pings():
    with H2Upstream() as up:
        async def main():
            pool = make_pool(up.port, keepalive=(0.1, 1.0))
            await exchange(pool, "/")
            await asyncio.sleep(0.45)
            assert pool.connections            # acks came back: still open
            pool.close()
        run(main())
    assert up.pings >= 3


def test_idle_connection_closes_after_idle_timeout():
    with H2Upstream() as up:
        async def main():
            pool = make_pool(up.port, idle=0.1)
            await exchange(pool, "/")
            deadline = time.monotonic() + 3
            while pool.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not pool.connections and pool.stats.upstream_cx_idle_timeout == 1
        run(main())
