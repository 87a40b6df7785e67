"""max_stream_duration (filters/http/router/stream_duration.py) over a streamed response body
(bound_body, BodyStream.cut: one timer, cut at the deadline, cancelled once written), and
the grpc-timeout a gRPC request goes upstream with."""

from __future__ import annotations

import asyncio

import pytest

from filters.http.router.stream_duration import bound_body, grpc_timeout_value, set_grpc_timeout
from sidecar.http.message import BodyStream, DurationReached, Request, Response
from sidecar.stats import HttpStats


def exchange() -> tuple[Request, Response, BodyStream, HttpStats, list[bool]]:
    body = BodyStream()
    response = Response(200, [], body)
    written: list[bool] = []
    response.on_complete = written.append
    return Request("GET", "/", "example.com", "http", [], None), response, body, HttpStats("web"), written


def test_cut_at_the_deadline_drops_what_is_unread():
    async def run() -> None:
        request, response, body, stats, written = exchange()
        loop = asyncio.get_running_loop()
        bound_body(request, response, loop.time() + 0.05, stats)
        body.feed(b"first")
        assert await body.read() == b"first"
        body.feed(b"never sent")            # buffered, not yet read when the limit comes
        await asyncio.sleep(0.1)
        with pytest.raises(DurationReached):
            await body.read()
        assert stats.downstream_rq_max_duration_reached == 1
        assert request.info.response_code_details == "max_duration_timeout"
        response.on_complete(False)          # the connection manager's, as it gives up
        assert written == [False]
    asyncio.run(run())


def test_a_body_written_in_time_disarms_the_timer():
    async def run() -> None:
        request, response, body, stats, written = exchange()
        loop = asyncio.get_running_loop()
        bound_body(request, response, loop.time() + 0.05, stats)
        body.feed(b"all")
        body.feed_eof()
        response.on_complete(True)
        await asyncio.sleep(0.1)
        assert written == [True]
        assert stats.downstream_rq_max_duration_reached == 0
        assert await body.read() == b"all"
    asyncio.run(run())


def test_a_body_that_all_came_is_not_cut_while_being_written():
    """All of it arrived from upstream (the rest is the downstream's backpressure): as Envoy,
    whose stream had ended its encoding by then, the limit no longer applies."""
    async def run() -> None:
        request, response, body, stats, _ = exchange()
        loop = asyncio.get_running_loop()
        bound_body(request, response, loop.time() + 0.05, stats)
        body.feed(b"all")
        body.feed_eof()
        await asyncio.sleep(0.1)
        assert await body.read() == b"all"
        assert stats.downstream_rq_max_duration_reached == 0
    asyncio.run(run())


@pytest.mark.parametrize("seconds, value", [
    (1.0, "1000m"), (1.2345, "1234m"), (0.2499, "249m"), (99999.999, "99999999m"),
    (100000.0, "100000S"), (1e8, "1666666M"), (1e10, "2777777H"),
])
def test_grpc_timeout_values_as_envoy_writes_them(seconds, value):
    assert grpc_timeout_value(seconds) == value


@pytest.mark.parametrize("ctype, rewritten", [
    ("application/grpc", True), ("application/grpc+proto", True), ("application/grpc;x=y", True),
    ("application/grpc-web", False), ("application/json", False), (None, False),
])
def test_only_grpc_requests_get_the_limit_as_grpc_timeout(ctype, rewritten):
    headers = [("grpc-timeout", "5S")] + ([("content-type", ctype)] if ctype else [])
    request = Request("POST", "/", "example.com", "http", headers, None, "2")
    set_grpc_timeout(request, 1.5)
    expected = "1500m" if rewritten else "5S"
    assert [v for k, v in request.headers if k == "grpc-timeout"] == [expected]
