"""The HTTP/2 connection manager: one downstream h2c connection, its streams served concurrently.

An ``asyncio.Protocol`` over the sans-IO ``h2`` library.  Each stream becomes
a ``Request`` handled by the same filter chain as HTTP/1 (``ctx.handler``) in a
task of its own; the response goes back as HEADERS and DATA frames.

Flow control both ways (RFC 9113 5.2):
- request bodies: received DATA is acknowledged (WINDOW_UPDATE) at once while
  the stream's body buffer is under its watermark (per_connection_buffer_limit_bytes),
  and only once the upstream has read it down otherwise: a slow upstream closes
  the client's window instead of growing our buffer (as Envoy's read-disabled streams);
- response bodies wait for the client's stream and connection windows and for
  the socket to drain, so a stalled reader stalls the upstream read (BodyStream's
  watermark), never our memory.

Abuse defences (h2_guard.py): Envoy's flood limits, premature (rapid) resets,
header list size and count limits (RST_STREAM INTERNAL_ERROR on that stream,
as Envoy), and protocol errors: GOAWAY with h2's error code, then close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from sidecar.codec.hpack import install as install_hpack
from sidecar.http.h2_guard import FloodGuard, is_premature
from sidecar.http.h2_state import Connection, ServerStateMachine
from sidecar.http.h2_stream import H2Stream, header_limit, split_headers
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyReset, BodyStream, DurationReached, Request, Response
from sidecar.http.request_headers import forwarded_headers
from sidecar.http.responding import add_date_server, local_response, log_access
from sidecar.timers import LazyDeadline

if TYPE_CHECKING:
    from sidecar.http.context import HcmContext

log = logging.getLogger(__name__)

# Not allowed in HTTP/2 (RFC 9113 8.2.2); an HTTP/1 upstream's own are dropped on the way.
_CONNECTION_SPECIFIC = frozenset(("connection", "keep-alive", "proxy-connection",
                                  "transfer-encoding", "upgrade", "te", "content-length"))
# A header block may decode past max_request_headers_kb (we then reset that stream, as
# Envoy): this much more is decoded before h2 stops it as an HPACK bomb and the
# connection ends (ENHANCE_YOUR_CALM).
_DECODE_SLACK = 256 * 1024
_ERR = h2.errors.ErrorCodes


class Http2Connection(asyncio.Protocol):
    """One downstream HTTP/2 connection and its streams."""

    def __init__(self, ctx: HcmContext) -> None:
        self.ctx = ctx
        self.stats = ctx.stats
        self.h2stats: Any = None
        self.h2: Any = None
        self.guard = FloodGuard(ctx.config.http2)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closing = False
        self.draining = False          # our GOAWAY went out: no new streams
        self.write_paused = False
        self.write_waiters: list[asyncio.Future[None]] = []
        self.peer: tuple | None = None
        self.local: tuple | None = None
        self.remote_ip = ""
        self.idle = LazyDeadline(ctx.loop, self._idle_timeout)
        self.requests = 0
        self.last_stream = 0
        self.flush_pending = False

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        transport.set_write_buffer_limits(ctx.buffer_limit)  # type: ignore[attr-defined]
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.remote_ip = self.peer[0] if self.peer else ""
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_http2_total += 1
        stats.downstream_cx_active += 1
        stats.downstream_cx_http2_active += 1
        self.h2stats = ctx.http2_scope()
        ctx.connections.add(self)
        opts = ctx.config.http2
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        conn = self.h2 = Connection(config=config)
        conn.state_machine = ServerStateMachine()
        install_hpack(conn)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: opts.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: opts.initial_stream_window_size,
        })
        conn.decoder.max_header_list_size = ctx.config.max_request_headers_kb * 1024 + _DECODE_SLACK
        conn.initiate_connection()
        if opts.initial_connection_window_size > 65535:
            conn.increment_flow_control_window(opts.initial_connection_window_size - 65535)
        # Our SETTINGS go out with the first answer: a client that turns out not to
        # speak HTTP/2 gets nothing (as from Envoy).
        self._went_idle()

    def data_received(self, data: bytes) -> None:
        self.stats.downstream_cx_rx_bytes_total += len(data)
        if self.closing:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._protocol_error(e)
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._on_data(event)
            elif kind is h2.events.RequestReceived:
                self._on_request(event)
            elif kind is h2.events.StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.body is not None:
                    stream.body.feed_eof()
            elif kind is h2.events.StreamReset:
                self._on_reset(event.stream_id)
            elif kind is h2.events.WindowUpdated:
                self._on_window_update(event.stream_id)
            elif kind is h2.events.TrailersReceived:
                self._on_trailers(event)
            elif kind is h2.events.PriorityUpdated:
                self._flood_check(self.guard.priority_frame())
            elif kind is h2.events.RemoteSettingsChanged:
                # A new initial window may have opened every stream's window.
                for stream in self.streams.values():
                    self._wake_window(stream)
            # A client's GOAWAY (ConnectionTerminated) changes nothing: its open streams are
            # answered and, as Envoy, the connection is left for the client (or the idle
            # timeout) to close (see ServerStateMachine).
            if self.closing:
                return
        self._flush()

    def eof_received(self) -> bool:
        # The client will send nothing more: streams whose request is incomplete are gone.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        stats = self.stats
        stats.downstream_cx_active -= 1
        stats.downstream_cx_http2_active -= 1
        stats.downstream_cx_destroy += 1
        self.ctx.connections.discard(self)
        self.idle.cancel()
        for stream in list(self.streams.values()):
            if stream.body is not None:
                stream.body.reset(BodyReset("downstream closed"))
            self._abandon(stream)
        for waiter in self.write_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.write_waiters = []

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiters, self.write_waiters = self.write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- request intake ---------------------------------------------------------------------

    def _on_request(self, event: Any) -> None:
        sid = event.stream_id
        ctx = self.ctx
        cfg = ctx.config
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_http2_total += 1
        self.guard.inbound_streams += 1
        self.guard.payload_frame()
        if not self.draining:
            self.last_stream = sid
        refused = header_limit(event.headers, cfg.max_headers_count, cfg.max_request_headers_kb * 1024)
        if refused:
            self._refuse(sid, refused)
            return
        method, path, authority, scheme, headers, content_length, expect_continue = \
            split_headers(event.headers)
        if self.draining:
            # After our GOAWAY: not processed, the client may retry it elsewhere.
            self.h2stats.tx_reset += 1
            self.h2.reset_stream(sid, _ERR.REFUSED_STREAM)
            return
        headers, host = forwarded_headers(headers, cfg, self.remote_ip, expect_continue)
        if not authority:
            authority = host
        # (allow_connect is off: a CONNECT, which has no :path, matches no route: 404, as Envoy.)
        if not authority or (path and path[0] != "/" and path != "*"):
            # No :authority nor Host, or a :path that is no path: a malformed request
            # ends the connection (Envoy).
            self.h2stats.rx_messaging_error += 1
            stats.downstream_rq_rx_reset += 1
            self._close_with(_ERR.PROTOCOL_ERROR, protocol_error=True)
            return
        body = None
        if not event.stream_ended:
            body = BodyStream(ctx.buffer_limit)
        request = Request(method, path, authority, scheme or "http", headers, body, "2", True,
                          content_length if body is not None else None,
                          body is not None and content_length is None)
        info = request.info
        info.downstream_remote_address = self.peer
        info.downstream_local_address = self.local
        now = ctx.loop.time()
        info.start_time = now
        stream = H2Stream(sid, request, body, now)
        if body is not None:
            body.on_pause = lambda: self._pause_stream(stream)
            body.on_resume = lambda: self._resume_stream(stream)
        self.streams[sid] = stream
        stats.downstream_rq_active += 1
        self.h2stats.streams_active += 1
        self.idle.clear()
        if expect_continue:
            # Envoy answers 100-continue itself (proxy_100_continue off).
            self.h2.send_headers(sid, [(b":status", b"100")])
        request.route = ctx.route_table.select(authority, path, method, headers, request.scheme)
        if ctx.router is not None and body is None and "#" not in path:
            # The chain is just the router: let it forward without a task if it can.
            stream.upstream = ctx.router.start(request, lambda outcome: self._answered(stream, outcome))
        if stream.upstream is None:
            stream.task = ctx.loop.create_task(self._serve(stream))
        self.requests += 1
        limit = cfg.max_requests_per_connection
        if limit and self.requests >= limit:
            self.drain()

    def _refuse(self, sid: int, stat: str, code: int = _ERR.INTERNAL_ERROR) -> None:
        """Reset a stream before it reached the filter chain (Envoy: the codec refused it)."""
        setattr(self.h2stats, stat, getattr(self.h2stats, stat) + 1)
        self.h2stats.tx_reset += 1
        self.stats.downstream_rq_rx_reset += 1
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.StreamClosedError:
            pass

    def _on_data(self, event: Any) -> None:
        sid = event.stream_id
        length = event.flow_controlled_length
        if not event.data and event.stream_ended is None and length == 0:
            if self._flood_check(self.guard.empty_frame()):
                return
        else:
            self.guard.payload_frame()
        stream = self.streams.get(sid)
        body = stream.body if stream is not None else None
        if body is None or stream.done:  # type: ignore[union-attr]
            # Nobody will read it (the stream is over): give the window back now.
            if length:
                self.h2.acknowledge_received_data(length, sid)
            return
        body.feed(event.data)
        if stream.paused:  # type: ignore[union-attr]
            stream.unacked += length  # type: ignore[union-attr]
        elif length:
            self.h2.acknowledge_received_data(length, sid)

    def _pause_stream(self, stream: H2Stream) -> None:
        stream.paused = True

    def _resume_stream(self, stream: H2Stream) -> None:
        """The upstream read the body down: give the client its window back."""
        stream.paused = False
        unacked, stream.unacked = stream.unacked, 0
        if unacked and not self.closing:
            self.h2.acknowledge_received_data(unacked, stream.sid)
            self._flush_soon()

    def _on_trailers(self, event: Any) -> None:
        self.h2stats.trailers += 1
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.body is not None:
            stream.body.feed_eof([(n.decode("latin-1"), v.decode("latin-1"))
                                  for n, v in event.headers])

    def _on_reset(self, sid: int) -> None:
        """The client reset a stream (RST_STREAM): stop serving it; its upstream request ends."""
        self.h2stats.rx_reset += 1
        stream = self.streams.get(sid)
        if stream is None or stream.done:
            return
        if stream.body is not None:
            stream.body.reset(BodyReset("downstream reset the stream"))
        self._wake_window(stream)
        self._abandon(stream)
        premature = is_premature(self.ctx.loop.time() - stream.started, stream.status != 0)
        if self.guard.stream_closed(premature) and not self.closing:
            self.stats.downstream_rq_too_many_premature_resets += 1
            self.stats.downstream_cx_protocol_error += 1
            self.closing = True
            self.transport.abort()  # type: ignore[union-attr]

    def _on_window_update(self, sid: int) -> None:
        if self._flood_check(self.guard.window_update_frame()):
            return
        if sid == 0:
            for stream in self.streams.values():
                self._wake_window(stream)
        else:
            one = self.streams.get(sid)
            if one is not None:
                self._wake_window(one)

    # --- serving --------------------------------------------------------------------------------

    async def _serve(self, stream: H2Stream) -> None:
        request = stream.request
        try:
            if "#" in request.path:
                # A fragment never belongs in a request target: Envoy refuses it while
                # normalizing the path, before routing.
                request.route = None
                raise LocalReply(400, b"", "", "path_normalization_failed")
            response = await self.ctx.handler(request)
        except LocalReply as reply:
            response = local_response(request, reply)
        except BodyReset:
            return          # the client reset the stream: _on_reset did the accounting
        except Exception:
            log.exception("bug: unhandled error answering %s %s", request.method, request.path)
            response = local_response(request, LocalReply(500, b"", "", "internal_error"))
        await self._serve_response(stream, response)

    def _answered(self, stream: H2Stream, outcome: Response | LocalReply | None) -> None:
        """Router.start's callback: the response (or the error) for a stream it forwarded."""
        stream.upstream = None
        if stream.done or self.closing:
            # Reset by the client meanwhile (_abandon did the accounting).
            if type(outcome) is Response and outcome.on_complete is not None:  # type: ignore[union-attr]
                outcome.on_complete(False)  # type: ignore[union-attr]
            return
        loop = self.ctx.loop
        if outcome is None:
            # The pooled connection was found closed: the coroutine path connects anew.
            stream.task = loop.create_task(self._serve(stream))
            return
        try:
            response = (outcome if type(outcome) is Response
                        else local_response(stream.request, outcome))  # type: ignore[arg-type]
            if not self._respond_now(stream, response):
                stream.task = loop.create_task(self._serve_response(stream, response))
        except Exception:
            # A bug must not leave the stream hanging: this runs in the upstream's callback.
            log.exception("bug: answering %s %s", stream.request.method, stream.request.path)
            self._abandon(stream)
            self._reset_stream(stream, _ERR.INTERNAL_ERROR)

    def _respond_now(self, stream: H2Stream, response: Response) -> bool:
        """Write a whole response without a task, when the client's windows take its body at
        once and the socket is not backed up; False (nothing done) otherwise."""
        body = response.body
        if type(body) is BodyStream or self.write_paused:
            return False
        size = len(body) if body else 0  # type: ignore[arg-type]
        if size:
            conn = self.h2
            try:
                window = conn.local_flow_control_window(stream.sid)
            except h2.exceptions.StreamClosedError:
                return False
            if size > window or size > conn.max_outbound_frame_size:
                return False
        sent = self._send_head(stream, response)
        ok = sent is not None
        if sent is not None and not sent[0]:
            try:
                self.h2.send_data(stream.sid, body, end_stream=True)
            except h2.exceptions.StreamClosedError:
                ok = False
            else:
                self.guard.data_frames_sent += 1
                stream.request.info.bytes_sent += size
                self._flush_soon()
        if response.on_complete is not None:
            response.on_complete(ok)
        if ok:
            self._finish(stream, response.status, response.headers)
        return True

    async def _serve_response(self, stream: H2Stream, response: Response) -> None:
        if stream.done:
            if response.on_complete is not None:
                response.on_complete(False)
            return
        try:
            ok = await self._respond(stream, response)
        except asyncio.CancelledError:
            # Reset by the client (or the connection ended) mid-response: the upstream
            # connection still streaming the body can't be reused.
            if response.on_complete is not None:
                response.on_complete(False)
            raise
        if response.on_complete is not None:
            response.on_complete(ok)
        if ok:
            self._finish(stream, response.status, response.headers)

    async def _respond(self, stream: H2Stream, response: Response) -> bool:
        """Write the response; False if the stream or connection ended first."""
        sent = self._send_head(stream, response)
        if sent is None:
            return False
        end, body = sent
        sid = stream.sid
        conn = self.h2
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
            return await self._send_data(stream, body, True)  # type: ignore[arg-type]
        try:
            async for chunk in body:
                if not await self._send_data(stream, chunk, False):
                    return False
        except BodyReset as reset:
            # The upstream broke off mid-body (or max_stream_duration expired): the client
            # sees the stream reset.
            self.stats.downstream_rq_tx_reset += 1
            self._reset_stream(stream, _ERR.INTERNAL_ERROR)
            if type(reset) is DurationReached:
                self._reset_done(stream, response.status, response.headers)
            return False
        if stream.done or self.closing:
            return False
        trailers = body.trailers
        try:
            if trailers:
                conn.send_headers(sid, [(n.encode("latin-1"), v.encode("latin-1"))
                                        for n, v in trailers], end_stream=True)
            else:
                conn.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            return False
        self._flush_soon()
        return True

    def _send_head(self, stream: H2Stream, response: Response) -> tuple[bool, Any] | None:
        """The response's HEADERS: (whether they ended the stream, the body left to send),
        or None when the stream is already closed."""
        request = stream.request
        sid = stream.sid
        status = response.status
        headers = response.headers
        add_date_server(headers, self.ctx.config)
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
            self.h2.send_headers(sid, block, end_stream=end)
        except h2.exceptions.StreamClosedError:
            return None
        stream.status = status
        self._flush_soon()
        return end, body

    async def _send_data(self, stream: H2Stream, data: bytes, end: bool) -> bool:
        """Send ``data`` as the client's windows allow; False if the stream or connection ended."""
        conn = self.h2
        sid = stream.sid
        info = stream.request.info
        view: Any = memoryview(data) if len(data) > conn.max_outbound_frame_size else data
        while view:
            if stream.done or self.closing:
                return False
            try:
                window = conn.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                return False
            if window <= 0:
                self._flush_soon()
                waiter = stream.window_waiter = self.ctx.loop.create_future()
                await waiter
                continue
            size = min(window, conn.max_outbound_frame_size, len(view))
            try:
                conn.send_data(sid, view[:size], end_stream=end and size == len(view))
            except h2.exceptions.StreamClosedError:
                return False
            self.guard.data_frames_sent += 1
            info.bytes_sent += size
            view = view[size:]
        self._flush_soon()
        if self.write_paused and not self.closing:
            waiter = self.ctx.loop.create_future()
            self.write_waiters.append(waiter)
            await waiter
        return not (stream.done or self.closing)

    def _wake_window(self, stream: H2Stream) -> None:
        waiter = stream.window_waiter
        if waiter is not None:
            stream.window_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, stream: H2Stream, status: int, headers: list[tuple[str, str]]) -> None:
        """The response is written: count and log the request."""
        if stream.done:
            return
        self._closed(stream)
        self.stats.count_class(status)
        if self.ctx.access_logs:
            log_access(self.ctx, stream.request, status, headers)
        body = stream.body
        if body is not None and not body.complete and not self.closing:
            # Answered before the request body ended: stop it (RFC 9113 8.1).
            self._reset_stream(stream, _ERR.NO_ERROR)
        self.guard.stream_closed(False)
        if not self.streams:
            if self.draining:
                self._close()
            else:
                self._went_idle()

    def _reset_done(self, stream: H2Stream, status: int, headers: list[tuple[str, str]]) -> None:
        """We reset the stream mid-response (max_stream_duration): as Envoy 1.40, counted as
        reset both ways and as a response of the status already sent, and logged."""
        self.stats.downstream_rq_rx_reset += 1
        body = stream.body
        if body is not None and not body.complete:
            body.reset(BodyReset("stream reset"))     # the request body going up ends too
            stream.body = None      # (so _finish sends no RST_STREAM of its own)
        self._finish(stream, status, headers)

    def _abandon(self, stream: H2Stream) -> None:
        """The client reset the stream or went away before its response was fully written (DC)."""
        if stream.done:
            return
        self._closed(stream)
        info = stream.request.info
        info.set_flag("DC")
        info.response_code_details = "downstream_remote_disconnect"
        self.stats.downstream_rq_rx_reset += 1
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
            self.stats.count_class(status)
        if self.ctx.access_logs:
            log_access(self.ctx, stream.request, status, [])
        if not self.streams and not self.closing:
            if self.draining:
                self._close()
            else:
                self._went_idle()

    def _closed(self, stream: H2Stream) -> None:
        stream.done = True
        self._wake_window(stream)
        self.streams.pop(stream.sid, None)
        self.stats.downstream_rq_active -= 1
        self.h2stats.streams_active -= 1

    def _reset_stream(self, stream: H2Stream, code: int) -> None:
        self.h2stats.tx_reset += 1
        try:
            self.h2.reset_stream(stream.sid, code)
        except h2.exceptions.StreamClosedError:
            return
        self._flush_soon()

    # --- writing, errors, idle, close ---------------------------------------------------------------

    def _flush_soon(self) -> None:
        """Write what h2 has queued at the end of this loop iteration: the frames of every
        stream answered meanwhile go out in one write (one syscall, not one per frame)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.ctx.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and not self.closing:
            self.stats.downstream_cx_tx_bytes_total += len(data)
            transport = self.transport
            transport.write(data)  # type: ignore[union-attr]
            flood = self.guard.written(data, transport.get_write_buffer_size())  # type: ignore[union-attr]
            if flood:
                # The client makes us write but does not read: Envoy closes at once.
                setattr(self.h2stats, flood, getattr(self.h2stats, flood) + 1)
                self.closing = True
                transport.abort()  # type: ignore[union-attr]

    def _flood_check(self, stat: str) -> bool:
        """An inbound flood: count it and close the connection (as Envoy, no GOAWAY)."""
        if not stat:
            return False
        setattr(self.h2stats, stat, getattr(self.h2stats, stat) + 1)
        self.closing = True
        self.transport.abort()  # type: ignore[union-attr]
        return True

    def _protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        """The client broke HTTP/2: h2 queued a GOAWAY with the error's code; send it and close."""
        self.stats.downstream_cx_protocol_error += 1
        text = str(error).lower()
        if "preamble" in text:
            # Not HTTP/2 at all (no client preface): close without a word, as Envoy.
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]
            return
        if isinstance(error, h2.exceptions.DenialOfServiceError):
            self.h2stats.header_list_size_too_large += 1
        elif "continuation" in text:
            self.h2stats.header_overflow += 1       # a header block without end
        elif "header" in text or "pseudo" in text:
            # A malformed request (RFC 9113 8.1.1), not a framing error: Envoy's messaging error.
            self.h2stats.rx_messaging_error += 1
        self._close_with(None)

    def _close_with(self, code: int | None, protocol_error: bool = False) -> None:
        """Send a GOAWAY (``code``, or the one h2 already queued) and close."""
        if protocol_error:
            self.stats.downstream_cx_protocol_error += 1
        if code is not None:
            try:
                self.h2.close_connection(code, last_stream_id=self.last_stream)
            except h2.exceptions.ProtocolError:
                pass
        self.h2stats.goaway_sent += 1
        self._flush()
        self.closing = True
        self.transport.close()  # type: ignore[union-attr]

    def _close(self) -> None:
        if self.closing:
            return
        try:
            self.h2.close_connection(_ERR.NO_ERROR, last_stream_id=self.last_stream)
            self.h2stats.goaway_sent += 1
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self.closing = True
        self.transport.close()  # type: ignore[union-attr]

    def _went_idle(self) -> None:
        timeout = self.ctx.config.idle_timeout
        if timeout is not None:
            self.idle.set(self.ctx.loop.time() + timeout)

    def _idle_timeout(self) -> None:
        if not self.streams and not self.closing:
            self.stats.downstream_cx_idle_timeout += 1
            self._close()

    def drain(self) -> None:
        """Server draining: GOAWAY now; close once the streams in flight are answered."""
        if self.draining or self.closing:
            return
        self.draining = True
        if not self.streams:
            self._close()
            return
        # Written by hand: h2's own GOAWAY would close its state machine, and the
        # streams in flight still have responses to send.
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream
        frame.error_code = _ERR.NO_ERROR
        self.h2stats.goaway_sent += 1
        data = frame.serialize()
        self.transport.write(data)  # type: ignore[union-attr]
        self.guard.written(data, self.transport.get_write_buffer_size())  # type: ignore[union-attr]
