"""A route's max_stream_duration, as Envoy's connection manager applies it to the stream.

The stream's limit is ``max_stream_duration``; with ``grpc_timeout_header_max`` set, a
request's grpc-timeout header replaces it, capped by that maximum (0: no cap) and less
``grpc_timeout_header_offset`` when larger than it.  It bounds the whole stream, as in
Envoy 1.40: expired before the response head, the proxy answers "downstream duration
timeout", 504 (408 while the request is still coming in; gRPC: DEADLINE_EXCEEDED)
(Router.within_duration); expired while the body is still coming, the stream is reset
(``bound_body``): HTTP/2 RST_STREAM INTERNAL_ERROR, HTTP/1.1 the connection closed, and
logged with the status already sent.  Either way: no response flag, details
max_duration_timeout, counted in downstream_rq_max_duration_reached.
"""

from __future__ import annotations

import asyncio
from typing import Any

from config import model
from sidecar.http.message import BodyStream, DurationReached, Request, Response

# grpc-timeout units (gRPC over HTTP/2: at most 8 digits, then the unit)
UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout(value: str) -> float | None:
    """Seconds of a grpc-timeout header value ("250m": 0.25), None when malformed."""
    digits, unit = value[:-1], UNITS.get(value[-1:])
    if unit is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


def stream_duration(action: model.RouteAction, request: Request) -> float | None:
    """The request's stream duration limit under ``action``, None for none."""
    limit = action.max_stream_duration
    header_max = action.grpc_timeout_header_max
    if header_max is not None:
        value = request.header("grpc-timeout")
        timeout = grpc_timeout(value) if value else None
        if timeout is not None:
            if header_max > 0 and (timeout == 0 or timeout > header_max):
                timeout = header_max
            offset = action.grpc_timeout_header_offset
            if offset and timeout > offset:
                timeout -= offset
            limit = timeout
    return limit or None        # 0: no limit


def bound_body(request: Request, response: Response, deadline: float, stats: Any) -> None:
    """The response head came within the stream's limit (``deadline``, loop time); its
    streamed body must end by then too.  One timer, armed here and cancelled when the
    connection manager has written the response (``on_complete``): nothing per chunk."""
    body = response.body
    assert type(body) is BodyStream

    def expired() -> None:
        if body.complete or body.failed:
            return      # all of it came (the rest is being written), or it broke off already
        stats.downstream_rq_max_duration_reached += 1
        request.info.response_code_details = "max_duration_timeout"
        body.cut(DurationReached("max_stream_duration reached"))

    timer = asyncio.get_running_loop().call_at(deadline, expired)
    written = response.on_complete

    def complete(ok: bool) -> None:
        timer.cancel()
        if written is not None:
            written(ok)

    response.on_complete = complete
