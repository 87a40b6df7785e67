"""A route's max_stream_duration, as Envoy's connection manager applies it to the stream.

The stream's limit is ``max_stream_duration``; with ``grpc_timeout_header_max`` set, a
request's grpc-timeout header replaces it, capped by that maximum (0: no cap) and less
``grpc_timeout_header_offset`` when larger than it.  It bounds the whole stream, as in
Envoy 1.40: expired before the response head, the proxy answers "downstream duration
timeout", 504 (408 while the request is still coming in; gRPC: DEADLINE_EXCEEDED)
(``within_duration``); expired while the body is still coming, the stream is reset
(``bound_body``): HTTP/2 RST_STREAM INTERNAL_ERROR, HTTP/1.1 the connection closed, and
logged with the status already sent.  Either way: no response flag, details
max_duration_timeout, counted in downstream_rq_max_duration_reached.  A gRPC request goes
upstream with the limit as its grpc-timeout (``set_grpc_timeout``); the route's own
timeout does not apply (config/translate_routes.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from config import model
from sidecar.http import local_reply
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


def set_grpc_timeout(request: Request, limit: float) -> None:
    """A gRPC request goes upstream with the stream's limit as its grpc-timeout (replacing
    the client's), as Envoy 1.40 does on a route with max_stream_duration: the server
    gives up when the proxy will."""
    ctype = request.header("content-type")
    if ctype is None or not (ctype == "application/grpc"
                             or ctype.startswith(("application/grpc+", "application/grpc;"))):
        return
    headers = [h for h in request.headers if h[0] != "grpc-timeout"]
    headers.append(("grpc-timeout", grpc_timeout_value(limit)))
    request.headers = headers


def grpc_timeout_value(seconds: float) -> str:
    """The grpc-timeout value of Envoy's Grpc::Common::toGrpcTimeout: whole milliseconds,
    in the smallest unit that keeps it to 8 digits."""
    value = int(seconds * 1000)
    for unit, next_factor in (("m", 1000), ("S", 60), ("M", 60)):
        if value <= 99999999:
            return f"{value}{unit}"
        value //= next_factor
    return f"{min(value, 99999999)}H"


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


async def within_duration(request: Request, action: model.RouteAction,
                          attempts: Coroutine[Any, Any, Response], stats: Any) -> Response:
    """Forward (``attempts``) within the route's stream duration limit, counted from the
    stream's start: expired before the response head, the upstream request is cancelled
    (reset) and the proxy answers; a body still streaming is bounded by ``bound_body``.
    ``stats``: the connection manager's (http.<prefix>.*)."""
    duration = stream_duration(action, request)
    if duration is None:
        return await attempts
    set_grpc_timeout(request, duration)
    deadline = request.info.start_time + duration
    limit = asyncio.timeout_at(deadline)
    try:
        async with limit:
            response = await attempts
    except TimeoutError:
        if limit.expired():
            stats.downstream_rq_max_duration_reached += 1
            body = request.body
            raise local_reply.duration_timeout(body is None or body.complete) from None
        raise
    if type(response.body) is BodyStream:
        bound_body(request, response, deadline, stats)      # the rest of the stream
    return response
