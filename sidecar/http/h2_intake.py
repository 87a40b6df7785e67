"""HTTP/2 request intake: the client's HEADERS, DATA, trailers and RST_STREAM for its streams,
turned into ``Request`` objects and their bodies; each stream is routed and started on
Router.start's callback path or in a task of its own (h2_respond.py answers it).

Request bodies are flow-controlled (RFC 9113 5.2): received DATA is acknowledged
(WINDOW_UPDATE) at once while the stream's body buffer is under its watermark
(per_connection_buffer_limit_bytes), and only once the upstream has read it down
otherwise: a slow upstream closes the client's window instead of growing our buffer
(as Envoy's read-disabled streams).

Plain functions over the connection's state (connection_h2.Http2Connection), called
from its frame dispatch; compiled, they cost what its methods did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h2.errors
import h2.exceptions

from sidecar.codec.http2_events import DataReceived, RequestReceived, TrailersReceived
from sidecar.http.h2_guard import is_premature
from sidecar.http.h2_respond import abandon, answered, serve, wake_window
from sidecar.http.h2_stream import H2Stream, RequestWindow, header_limit, split_headers
from sidecar.http.message import BodyReset, BodyStream, Request
from sidecar.http.request_headers import forwarded_headers
from sidecar.http.responding import log_refused

if TYPE_CHECKING:
    from sidecar.http.connection_h2 import Http2Connection

_ERR = h2.errors.ErrorCodes


def on_request(conn: Http2Connection, event: RequestReceived) -> None:
    """A request's HEADERS: a new stream, refused, or routed and started."""
    sid = event.stream_id
    ctx = conn.ctx
    cfg = ctx.config
    stats = conn.stats
    stats.downstream_rq_total += 1
    stats.downstream_rq_http2_total += 1
    conn.guard.inbound_streams += 1
    conn.guard.payload_frame()
    if not conn.draining:
        conn.last_stream = sid
    refused = header_limit(event.headers, cfg.max_headers_count, cfg.max_request_headers_kb * 1024)
    if refused:
        refuse(conn, sid, refused)
        return
    method, path, authority, scheme, headers, content_length, expect_continue = \
        split_headers(event.headers)
    if conn.draining:
        # After our GOAWAY: not processed, the client may retry it elsewhere.
        conn.h2stats.tx_reset += 1
        conn.h2.reset_stream(sid, _ERR.REFUSED_STREAM)
        return
    headers, host = forwarded_headers(headers, cfg, conn.remote_ip, expect_continue)
    if not authority:
        authority = host
    # (allow_connect is off: a CONNECT, which has no :path, matches no route: 404, as Envoy.)
    if not authority or (path and path[0] != "/" and path != "*"):
        # No :authority nor Host, or a :path that is no path: a malformed request
        # ends the connection (Envoy).
        conn.h2stats.rx_messaging_error += 1
        conn.close_with(_ERR.PROTOCOL_ERROR, protocol_error=True)
        log_malformed(conn, "http2.violation.of.messaging.rule")
        return
    body = window = None
    if not event.ended:
        window = RequestWindow(conn, sid)
        body = BodyStream(ctx.buffer_limit, window.pause, window.resume)
    request = Request(method, path, authority, scheme or "http", headers, body, "2", True,
                      content_length if body is not None else None,
                      body is not None and content_length is None)
    info = request.info
    info.downstream_remote_address = conn.peer
    info.downstream_local_address = conn.local
    now = ctx.loop.time()
    info.start_time = now
    stream = H2Stream(sid, request, body, now)
    stream.window = window
    conn.streams[sid] = stream
    stats.downstream_rq_active += 1
    conn.h2stats.streams_active += 1
    conn.idle.clear()
    if expect_continue:
        # Envoy answers 100-continue itself (proxy_100_continue off).
        conn.h2.send_headers(sid, [(b":status", b"100")])
    request.route = ctx.route_table.select(authority, path, method, headers, request.scheme)
    if body is not None and ctx.router is not None:
        # Its DATA may be in this same read (a gRPC call's message is): served once the
        # read is through (dispatch), when the whole body may be at hand.
        conn.arrived.append(stream)
    else:
        dispatch(conn, stream)
    conn.requests += 1
    limit = cfg.max_requests_per_connection
    if limit and conn.requests >= limit:
        conn.drain()


def dispatch(conn: Http2Connection, stream: H2Stream) -> None:
    """Serve a new stream: when the chain is just the router, it forwards without a task if
    it can (Router.start); else, or when it can't, a task runs the chain."""
    if stream.done:
        return
    router = conn.ctx.router
    if router is not None and "#" not in stream.request.path:
        stream.upstream = router.start(stream.request,
                                       lambda outcome: answered(conn, stream, outcome))
    if stream.upstream is None:
        stream.task = conn.ctx.loop.create_task(serve(conn, stream))


def refuse(conn: Http2Connection, sid: int, stat: str, code: int = _ERR.INTERNAL_ERROR) -> None:
    """Reset a stream before it reached the filter chain (Envoy: the codec refused it)."""
    h2stats = conn.h2stats
    setattr(h2stats, stat, getattr(h2stats, stat) + 1)
    h2stats.tx_reset += 1
    conn.stats.downstream_rq_rx_reset += 1
    try:
        conn.h2.reset_stream(sid, code)
    except h2.exceptions.StreamClosedError:
        pass


def malformed(conn: Http2Connection, sid: int, details: str) -> None:
    """The codec refused a header block of stream ``sid`` as malformed (RFC 9113 8.1.1) and
    the connection is closing.  As Envoy, whose codec had opened the stream: a request's
    headers count as a request and log as one without headers ("- - HTTP/2"); trailers
    end their stream's request; both reset, flag DPE, code 0, the codec's ``details``."""
    stream = conn.streams.get(sid)
    if stream is not None:
        conn.h2stats.trailers += 1
        if stream.body is not None:
            stream.body.reset(BodyReset("malformed trailers"))
        abandon(conn, stream, "DPE", details)
        return
    stats = conn.stats
    stats.downstream_rq_total += 1
    stats.downstream_rq_http2_total += 1
    log_malformed(conn, details)


def log_malformed(conn: Http2Connection, details: str) -> None:
    """A request refused as malformed before it had a stream of ours (already counted in
    downstream_rq_total): reset, and logged without headers."""
    conn.stats.downstream_rq_rx_reset += 1
    if conn.ctx.access_logs:
        log_refused(conn.ctx, Request("", "", "", "", [], None, "2"), conn.peer, conn.local,
                    0, [], details, "DPE")


def on_data(conn: Http2Connection, event: DataReceived) -> None:
    """DATA: into the stream's body, its window given back at once unless the body is paused."""
    sid = event.stream_id
    length = event.flow_controlled_length
    if not event.data and not event.ended and length == 0:
        if conn.flood_check(conn.guard.empty_frame()):
            return
    else:
        conn.guard.payload_frame()
    stream = conn.streams.get(sid)
    body = stream.body if stream is not None else None
    if body is None or stream.done:  # type: ignore[union-attr]
        # Nobody will read it (the stream is over): give the window back now.
        if length:
            conn.h2.acknowledge_received_data(length, sid)
    else:
        body.feed(event.data)
        window: RequestWindow = stream.window  # type: ignore[union-attr,assignment]
        if window.paused:
            window.unacked += length
        elif length:
            conn.h2.acknowledge_received_data(length, sid)
    if event.ended and body is not None:
        body.feed_eof()
        stream.body = None  # type: ignore[union-attr]    # (see on_trailers)


def on_trailers(conn: Http2Connection, event: TrailersReceived) -> None:
    conn.h2stats.trailers += 1
    stream = conn.streams.get(event.stream_id)
    if stream is not None and stream.body is not None:
        stream.body.feed_eof([(n.decode("latin-1"), v.decode("latin-1"))
                              for n, v in event.headers])
        # The whole body is in: the stream has no more use for it (its reader has it).
        stream.body = None


def on_reset(conn: Http2Connection, sid: int) -> None:
    """The client reset a stream (RST_STREAM): stop serving it; its upstream request ends."""
    conn.h2stats.rx_reset += 1
    stream = conn.streams.get(sid)
    if stream is None or stream.done:
        return
    if stream.body is not None:
        stream.body.reset(BodyReset("downstream reset the stream"))
    wake_window(stream)
    abandon(conn, stream)
    premature = is_premature(conn.ctx.loop.time() - stream.started, stream.status != 0)
    if conn.guard.stream_closed(premature) and not conn.closing:
        conn.stats.downstream_rq_too_many_premature_resets += 1
        conn.stats.downstream_cx_protocol_error += 1
        conn.abort()
