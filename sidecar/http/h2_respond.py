"""Serving HTTP/2 streams: each request's response, from the filter chain or Router.start's
callback, written as HEADERS, DATA and trailers; then the stream's end (answered, reset or
abandoned) counted and access-logged.

Response bodies are flow-controlled (RFC 9113 5.2): they wait for the client's stream
and connection windows and for the socket to drain, so a stalled reader stalls the
upstream read (BodyStream's watermark), never our memory.

Plain functions over the connection's state (connection_h2.Http2Connection, which
owns the socket, the HTTP/2 protocol state and the streams); compiled, they cost what
its methods did.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import h2.errors
import h2.exceptions

from sidecar.http.h2_stream import H2Stream
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyReset, BodyStream, Response, UpstreamBodyReset
from sidecar.http.responding import add_date_server, local_response, log_access
from sidecar.response_counts import count_class

if TYPE_CHECKING:
    from sidecar.http.connection_h2 import Http2Connection

log = logging.getLogger(__name__)

# Not allowed in HTTP/2 (RFC 9113 8.2.2); an HTTP/1 upstream's own are dropped on the way.
_CONNECTION_SPECIFIC = frozenset(("connection", "keep-alive", "proxy-connection",
                                  "transfer-encoding", "upgrade", "te", "content-length"))
_ERR = h2.errors.ErrorCodes


# --- the two ways a stream is answered ----------------------------------------------------

async def serve(conn: Http2Connection, stream: H2Stream) -> None:
    """The coroutine path: the whole filter chain, then the response."""
    request = stream.request
    try:
        if "#" in request.path:
            # A fragment never belongs in a request target: Envoy refuses it while
            # normalizing the path, before routing.
            request.route = None
            raise LocalReply(400, b"", "", "path_normalization_failed")
        response = await conn.ctx.handler(request)
    except LocalReply as reply:
        response = local_response(request, reply)
    except BodyReset:
        return          # the client reset the stream: on_reset did the accounting
    except Exception:
        log.exception("bug: unhandled error answering %s %s", request.method, request.path)
        response = local_response(request, LocalReply(500, b"", "", "internal_error"))
    await serve_response(conn, stream, response)


def answered(conn: Http2Connection, stream: H2Stream, outcome: Response | LocalReply | None) -> None:
    """Router.start's callback: the response (or the error) for a stream it forwarded."""
    stream.upstream = None
    if stream.done or conn.closing:
        # Reset by the client meanwhile (abandon did the accounting).
        if type(outcome) is Response and outcome.on_complete is not None:  # type: ignore[union-attr]
            outcome.on_complete(False)  # type: ignore[union-attr]
        return
    loop = conn.ctx.loop
    if outcome is None:
        # The pooled connection was found closed: the coroutine path connects anew.
        stream.task = loop.create_task(serve(conn, stream))
        return
    try:
        response = (outcome if type(outcome) is Response
                    else local_response(stream.request, outcome))  # type: ignore[arg-type]
        if not respond_now(conn, stream, response):
            stream.task = loop.create_task(serve_response(conn, stream, response))
    except Exception:
        # A bug must not leave the stream hanging: this runs in the upstream's callback.
        log.exception("bug: answering %s %s", stream.request.method, stream.request.path)
        abandon(conn, stream)
        reset_stream(conn, stream, _ERR.INTERNAL_ERROR)


# --- writing the response -------------------------------------------------------------------

def respond_now(conn: Http2Connection, stream: H2Stream, response: Response) -> bool:
    """Write a whole response without a task, when all of it is at hand (bytes, or a body
    stream that has ended, trailers and all: a gRPC answer that came in one read), the
    client's windows take it at once and the socket is not backed up; False (nothing
    done) otherwise."""
    body = response.body
    if conn.write_paused:
        return False
    streamed = type(body) is BodyStream
    if streamed:
        if (not body.complete or stream.request.method == "HEAD"  # type: ignore[union-attr]
                or response.status in (204, 304)):
            return False
        size = body.buffered  # type: ignore[union-attr]
    else:
        size = len(body) if body else 0  # type: ignore[arg-type]
    if size:
        h2conn = conn.h2
        try:
            window = h2conn.local_flow_control_window(stream.sid)
        except h2.exceptions.StreamClosedError:
            return False
        if size > window or size > h2conn.max_outbound_frame_size:
            return False
    sent = send_head(conn, stream, response)
    ok = sent is not None
    if sent is not None and not sent[0]:
        data = body
        trailers = None
        if streamed:
            data = body.read_nowait()  # type: ignore[union-attr]
            trailers = body.trailers  # type: ignore[union-attr]
        ok = send_rest(conn, stream, data, trailers)  # type: ignore[arg-type]
    if response.on_complete is not None:
        response.on_complete(ok)
    if ok:
        finish(conn, stream, response.status, response.headers)
    return True


def send_rest(conn: Http2Connection, stream: H2Stream, data: bytes,
              trailers: list[tuple[str, str]] | None) -> bool:
    """The body (within the windows) and the trailers after the head; False if the stream
    is gone."""
    sid = stream.sid
    h2conn = conn.h2
    try:
        if data:
            h2conn.send_data(sid, data, end_stream=not trailers)
            conn.guard.data_frames_sent += 1
            stream.request.info.bytes_sent += len(data)
        if trailers:
            h2conn.send_headers(sid, [(n.encode("latin-1"), v.encode("latin-1"))
                                      for n, v in trailers], end_stream=True)
        elif not data:
            h2conn.end_stream(sid)
    except h2.exceptions.StreamClosedError:
        return False
    conn.flush_soon()
    return True


async def serve_response(conn: Http2Connection, stream: H2Stream, response: Response) -> None:
    if stream.done:
        if response.on_complete is not None:
            response.on_complete(False)
        return
    try:
        ok = await respond(conn, stream, response)
    except asyncio.CancelledError:
        # Reset by the client (or the connection ended) mid-response: the upstream
        # connection still streaming the body can't be reused.
        if response.on_complete is not None:
            response.on_complete(False)
        raise
    if response.on_complete is not None:
        response.on_complete(ok)
    if ok:
        finish(conn, stream, response.status, response.headers)


async def respond(conn: Http2Connection, stream: H2Stream, response: Response) -> bool:
    """Write the response; False if the stream or connection ended first."""
    sent = send_head(conn, stream, response)
    if sent is None:
        return False
    end, body = sent
    if end:
        if type(response.body) is BodyStream:
            # HEAD or 204/304 with a proxied body: drain it so the upstream is reusable.
            try:
                async for _ in response.body:  # type: ignore[union-attr]
                    pass
            except BodyReset:
                return False
        return True
    if type(body) is not BodyStream:
        return await send_data(conn, stream, body, True)  # type: ignore[arg-type]
    try:
        async for chunk in body:
            if not await send_data(conn, stream, chunk, False):
                return False
    except BodyReset as reset:
        # The upstream broke off mid-body (or max_stream_duration expired): the client
        # sees the stream reset (INTERNAL_ERROR), and the request is over now (Envoy logs
        # it then, the upstream's break as its flag and details), not when the connection
        # closes.
        if isinstance(reset, UpstreamBodyReset):
            info = stream.request.info
            info.set_flag(reset.flag)
            info.response_code_details = reset.details
        conn.stats.downstream_rq_tx_reset += 1
        reset_stream(conn, stream, _ERR.INTERNAL_ERROR)
        reset_done(conn, stream, response.status, response.headers)
        return False
    if stream.done or conn.closing:
        return False
    return send_rest(conn, stream, b"", body.trailers)


def send_head(conn: Http2Connection, stream: H2Stream, response: Response) -> tuple[bool, Any] | None:
    """The response's HEADERS: (whether they ended the stream, the body left to send),
    or None when the stream is already closed."""
    request = stream.request
    sid = stream.sid
    status = response.status
    headers = response.headers
    add_date_server(headers, conn.ctx.config)
    block = [(b":status", str(status).encode())]
    for name, value in headers:
        if name not in _CONNECTION_SPECIFIC:
            block.append((name.encode("latin-1"), value.encode("latin-1")))
    body = response.body
    bodyless = request.method == "HEAD" or status in (204, 304)
    if type(body) is not BodyStream:
        length = len(body) if body else 0  # type: ignore[arg-type]
        if request.method == "HEAD" and response.content_length is not None:
            length = response.content_length
        if status not in (204, 304):
            block.append((b"content-length", str(length).encode()))
        if bodyless:
            body = None
    elif response.content_length is not None:
        block.append((b"content-length", str(response.content_length).encode()))
    end = not body
    try:
        conn.h2.send_headers(sid, block, end_stream=end)
    except h2.exceptions.StreamClosedError:
        return None
    stream.status = status
    conn.flush_soon()
    return end, body


async def send_data(conn: Http2Connection, stream: H2Stream, data: bytes, end: bool) -> bool:
    """Send ``data`` as the client's windows allow; False if the stream or connection ended."""
    h2conn = conn.h2
    sid = stream.sid
    info = stream.request.info
    view: Any = memoryview(data) if len(data) > h2conn.max_outbound_frame_size else data
    while view:
        if stream.done or conn.closing:
            return False
        try:
            window = h2conn.local_flow_control_window(sid)
        except h2.exceptions.StreamClosedError:
            return False
        if window <= 0:
            conn.flush_soon()
            waiter = stream.window_waiter = conn.ctx.loop.create_future()
            conn.window_blocked[sid] = stream
            await waiter
            continue
        size = min(window, h2conn.max_outbound_frame_size, len(view))
        try:
            h2conn.send_data(sid, view[:size], end_stream=end and size == len(view))
        except h2.exceptions.StreamClosedError:
            return False
        conn.guard.data_frames_sent += 1
        info.bytes_sent += size
        view = view[size:]
    conn.flush_soon()
    if conn.write_paused and not conn.closing:
        waiter = conn.ctx.loop.create_future()
        conn.write_waiters.append(waiter)
        await waiter
    return not (stream.done or conn.closing)


def on_window_update(conn: Http2Connection, sid: int) -> None:
    """The client opened a window (WINDOW_UPDATE): wake the writers waiting on it."""
    if conn.flood_check(conn.guard.window_update_frame()):
        return
    if sid == 0:
        wake_blocked(conn)
    else:
        one = conn.window_blocked.pop(sid, None)
        if one is not None:
            wake_window(one)


def wake_blocked(conn: Http2Connection) -> None:
    """Every stream waiting for window: the connection's window (or every stream's) opened."""
    if conn.window_blocked:
        blocked, conn.window_blocked = conn.window_blocked, {}
        for stream in blocked.values():
            wake_window(stream)


def wake_window(stream: H2Stream) -> None:
    waiter = stream.window_waiter
    if waiter is not None:
        stream.window_waiter = None
        if not waiter.done():
            waiter.set_result(None)


# --- the stream's end ------------------------------------------------------------------------

def finish(conn: Http2Connection, stream: H2Stream, status: int, headers: list[tuple[str, str]]) -> None:
    """The response is written: count and log the request."""
    if stream.done:
        return
    closed(conn, stream)
    count_class(conn.stats.responses, status)
    if conn.ctx.access_logs:
        log_access(conn.ctx, stream.request, status, headers)
    body = stream.body
    if body is not None and not body.complete and not conn.closing:
        # Answered before the request body ended: stop it (RFC 9113 8.1).
        reset_stream(conn, stream, _ERR.NO_ERROR)
    conn.guard.stream_closed(False)
    conn.after_stream()


def reset_done(conn: Http2Connection, stream: H2Stream, status: int, headers: list[tuple[str, str]]) -> None:
    """We reset the stream mid-response (max_stream_duration, or the upstream broke off):
    as Envoy 1.40, counted as reset both ways and as a response of the status already
    sent, and logged."""
    conn.stats.downstream_rq_rx_reset += 1
    body = stream.body
    if body is not None and not body.complete:
        body.reset(BodyReset("stream reset"))     # the request body going up ends too
        stream.body = None      # (so finish sends no RST_STREAM of its own)
    finish(conn, stream, status, headers)


def abandon(conn: Http2Connection, stream: H2Stream, flag: str = "DC",
            details: str = "downstream_remote_disconnect") -> None:
    """The client reset the stream or went away before its response was fully written (DC);
    or (``flag`` DPE) its trailers broke the protocol."""
    if stream.done:
        return
    closed(conn, stream)
    info = stream.request.info
    info.set_flag(flag)
    info.response_code_details = details
    conn.stats.downstream_rq_rx_reset += 1
    task = stream.task
    if task is not None and not task.done() and task is not asyncio.current_task():
        task.cancel()
    upstream, stream.upstream = stream.upstream, None
    if upstream is not None:
        # Router.start's path was waiting for the upstream: drop it (as the task's
        # cancellation does on the coroutine path).
        upstream.abort()
    status = stream.status
    if status:
        # The response had begun: Envoy counted its class when the headers went out.
        count_class(conn.stats.responses, status)
    if conn.ctx.access_logs:
        log_access(conn.ctx, stream.request, status, [])
    if not conn.closing:
        conn.after_stream()


def closed(conn: Http2Connection, stream: H2Stream) -> None:
    stream.done = True
    wake_window(stream)
    conn.window_blocked.pop(stream.sid, None)
    conn.streams.pop(stream.sid, None)
    conn.stats.downstream_rq_active -= 1
    conn.h2stats.streams_active -= 1


def reset_stream(conn: Http2Connection, stream: H2Stream, code: int) -> None:
    conn.h2stats.tx_reset += 1
    try:
        conn.h2.reset_stream(stream.sid, code)
    except h2.exceptions.StreamClosedError:
        return
    conn.flush_soon()
