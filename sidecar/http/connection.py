"""The HTTP/1.1 connection manager: one downstream connection, parsed, routed, answered in order.

An ``asyncio.Protocol`` (the hot path): bytes go through the sans-IO parser;
requests are queued and answered one at a time, so pipelined requests are
answered in order.  A request goes through the filter chain in a task, or,
when the chain is only the router, through Router.start's callback path with
no task at all.  Flow control both ways: request bodies pause our reading
above the watermark, responses wait for the socket to drain.  Errors become
responses here and only here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from sidecar.codec.events import Body, EndOfMessage, Headers, ParseError, RequestHead
from sidecar.codec.http1 import (LAST_CHUNK, LOW_VERSION, encode_chunk, encode_last_chunk,
                                 serialize_response_head)
from sidecar.http import local_reply
from sidecar.flow_control import WriteFlowControl
from sidecar.http.dates import http_date
from sidecar.http.codec_errors import (answer_codec_error, parse_error, protocol_error,
                                       resume_after_error)
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import (BodyReset, BodyStream, DurationReached, Request, Response,
                                 StreamInfo, UpstreamBodyReset)
from sidecar.http.request_headers import forwarded_headers
from sidecar.http.responding import add_date_server, local_response, log_access, log_refused
from sidecar.http.upgrade import HeldTunnelBytes, switch_protocols, upgrade_request_fields
from sidecar.response_counts import count_class
from sidecar.timers import LazyDeadline

if TYPE_CHECKING:
    from sidecar.http.context import HcmContext

log = logging.getLogger(__name__)

# Envoy's delayed_close_timeout default: a connection closed mid-response (stream reset by
# max_stream_duration) gets its FIN this long after the last byte, unless the client
# closes first (Envoy's FlushWriteAndDelay close).
DELAYED_CLOSE = 1.0


class HttpConnection(WriteFlowControl, asyncio.Protocol):
    def __init__(self, ctx: HcmContext) -> None:
        self.ctx = ctx
        self.stats = ctx.stats
        self.transport: asyncio.Transport | None = None
        self.parser = ctx.new_request_parser()
        self.queue: deque[Request] = deque()
        self.parsing: BodyStream | None = None   # body of the request being parsed
        self.task: asyncio.Task[None] | None = None    # the coroutine path, when in use
        self.upstream: Any = None     # the upstream connection of Router.start's path
        self.drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.reading_paused = False
        self.closing = False
        self.lingering = False      # closing after DELAYED_CLOSE (see _reset_mid_body)
        self.peer: tuple | None = None
        self.local: tuple | None = None
        self.remote_ip = ""
        self.idle = LazyDeadline(ctx.loop, self._idle_timeout)
        self.requests = 0
        # The codec's answer (flag DPE) to bytes it refused while a request was being
        # answered: sent once that request is over (see sidecar.http.codec_errors).
        self.codec_error: LocalReply | None = None
        # A request the codec refused (its body broke in the read that brought its head,
        # or it has no Host) and the error, held while requests before it are answered
        # (see sidecar.http.codec_errors).
        self.held: tuple[RequestHead, ParseError] | None = None

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(self.ctx.buffer_limit)  # type: ignore[attr-defined]
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.remote_ip = self.peer[0] if self.peer else ""
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_http1_total += 1
        stats.downstream_cx_active += 1
        stats.downstream_cx_http1_active += 1
        self.ctx.connections.add(self)
        self._went_idle()

    def data_received(self, data: bytes) -> None:
        self.stats.downstream_cx_rx_bytes_total += len(data)
        if self.closing:
            return
        try:
            events = self.parser.feed(data)
        except ParseError as e:
            parse_error(self, e)
            return
        self._dispatch(events)

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is Body:
                self.parsing.feed(event.data)  # type: ignore[union-attr]
            elif kind is RequestHead:
                self._on_head(event)
                if self.closing:
                    return
            elif kind is EndOfMessage:
                if self.parsing is not None:
                    self.parsing.feed_eof(event.trailers)
                    self.parsing = None

    def eof_received(self) -> bool:
        # HTTP/1 has no half-close: the client is gone.  Let responses in flight
        # finish writing only if the request was complete (Envoy closes too).
        if self.parsing is not None:
            self.parsing.reset(BodyReset("downstream closed mid-request"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        stats = self.stats
        stats.downstream_cx_active -= 1
        stats.downstream_cx_http1_active -= 1
        stats.downstream_cx_destroy += 1
        self.ctx.connections.discard(self)
        self.idle.cancel()
        if self.parsing is not None:
            self.parsing.reset(BodyReset("downstream closed"))
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            # The router's synchronous path was waiting for the upstream: drop it.
            self._abandoned(self.queue[0])
            upstream.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.release_writers()

    # --- request intake ----------------------------------------------------------

    def _on_head(self, head: RequestHead) -> None:
        cfg = self.ctx.config
        target = head.target
        headers, authority = forwarded_headers(head.headers, cfg, self.remote_ip,
                                               head.expect_continue)
        if head.version != "1.1":
            if not cfg.accept_http_10:
                # Envoy's codec refuses it before the head is decoded: logged as "- -".
                protocol_error(self, ParseError(426, LOW_VERSION))
                return
            if not authority:
                authority = cfg.default_host_for_http_10
        if target[0] != "/":
            if target.startswith(("http://", "https://")):
                # absolute-form (RFC 9112 3.2.2): the URI's authority replaces Host.
                rest = target.split("://", 1)[1]
                slash = rest.find("/")
                authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
            else:
                self.stats.downstream_rq_non_relative_path += 1
                self.refuse(head, authority, target, 400, "http1.invalid_url")
                return
        if not authority:
            self.refuse(head, authority, target, 400, "missing_host_header")
            return
        if "#" in target:
            # A fragment never belongs in a request target: Envoy refuses it while
            # normalizing the path, before routing.
            self.refuse(head, authority, target, 400, "path_normalization_failed")
            return
        upgrade: list[tuple[str, str]] | None = None
        if head.upgrade:
            upgrade = upgrade_request_fields(self, head, authority, target, headers)
            if upgrade is None and self.closing:
                return
        if head.expect_continue:
            # Envoy answers 100-continue itself (proxy_100_continue off).
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        body = None
        if head.chunked or (head.content_length or 0) > 0:
            body = self.parsing = BodyStream(self.ctx.buffer_limit, self._pause_reading,
                                             self._resume_reading)
        request = Request(head.method, target, authority, "http", headers, body, head.version,
                          head.keep_alive and not head.upgrade, head.content_length, head.chunked,
                          head.expect_continue)
        info = request.info
        if upgrade is not None:
            # Until the upstream answers, what the client sends is held, not parsed.
            request.upgrade = upgrade
            self.parser = HeldTunnelBytes(self.parser.take_tunnel_bytes(), self.ctx.buffer_limit,
                                          self._pause_reading, info)
        info.downstream_remote_address = self.peer
        info.downstream_local_address = self.local
        self.queue.append(request)
        if len(self.queue) > 1:
            if self.codec_error is not None:
                # Read in the same feed as a refused HTTP/1.0 head before it: Envoy's
                # codec reads nothing after its error.
                self.queue.pop()
                return
            # Pipelined: hold the next requests (and their bodies) at the socket.
            self._pause_reading()
        else:
            self._start(request)

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.closing and len(self.queue) <= 1:
            if self.codec_error is not None or self.held is not None:
                resume_after_error(self)    # reading stays paused from a codec error on
                return
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    # --- serving: one request at a time, in arrival order (RFC 9112 9.3.2) ----------

    def _start(self, request: Request) -> None:
        """Begin answering the request at the head of the queue."""
        ctx = self.ctx
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_http1_total += 1
        stats.downstream_rq_active += 1
        self.idle.clear()
        request.info.start_time = ctx.loop.time()
        request.route = ctx.route_table.select(
            request.authority, request.path, request.method, request.headers, request.scheme)
        if ctx.router is not None:
            # The chain is just the router: let it forward without a task if it can.
            self.upstream = ctx.router.start(request, self._answered)
            if self.upstream is not None:
                return
        self.task = ctx.loop.create_task(self._respond(request))

    def _answered(self, outcome: Response | LocalReply | None) -> None:
        """Router.start's callback: the response head (or the error) for the current request."""
        self.upstream = None
        if self.closing:
            return          # connection_lost did the accounting
        request = self.queue[0]
        try:
            if outcome is None:
                self.task = self.ctx.loop.create_task(self._respond(request))
                return
            response = (outcome if type(outcome) is Response
                        else self._local_response(request, outcome))  # type: ignore[arg-type]
            if type(response.body) is BodyStream:
                self.task = self.ctx.loop.create_task(self._send(request, response))
                return
            keep_open = self._write_whole(request, response, self._frame(request, response))
        except Exception:
            # A bug must not leave the client hanging: this runs in the upstream's callback.
            log.exception("bug: answering %s %s", request.method, request.path)
            self._abandoned(request)
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.finish(request, response.status, response.headers, keep_open)

    async def _respond(self, request: Request) -> None:
        """The coroutine path: the whole filter chain, then the response."""
        info = request.info
        try:
            try:
                response = await self.ctx.handler(request)
            except LocalReply as reply:
                response = self._local_response(request, reply)
            except BodyReset:
                # The request body never finished: the client is gone or broke framing.
                info.set_flag("DC")
                info.response_code_details = "downstream_remote_disconnect"
                self.stats.downstream_rq_rx_reset += 1
                self.finish(request, 0, [], False)
                return
            except Exception:
                log.exception("bug: unhandled error answering %s %s", request.method, request.path)
                response = self._local_response(request, LocalReply(500, b"", "", "internal_error"))
        except asyncio.CancelledError:
            if self.codec_error is not None and not self.closing:
                answer_codec_error(self, request, self.codec_error)
            else:
                self._abandoned(request)
            raise
        await self._send(request, response)

    async def _send(self, request: Request, response: Response) -> None:
        if response.upgraded is not None:
            switch_protocols(self, request, response)
            return
        keep_open = self._frame(request, response)
        if type(response.body) is BodyStream:
            try:
                keep_open = await self._write_streamed(request, response, keep_open)
            except asyncio.CancelledError:
                self._abandoned(request)
                if response.on_complete is not None:
                    response.on_complete(False)     # the upstream exchange can't finish
                raise
        else:
            keep_open = self._write_whole(request, response, keep_open)
        self.finish(request, response.status, response.headers, keep_open)

    def finish(self, request: Request, status: int, headers: list[tuple[str, str]],
                keep_open: bool, counted: bool = False) -> None:
        """The current request is over: count and log it, then serve the next or close
        (public: an upgraded request's tunnel, in sidecar.http.upgrade, ends through it,
        ``counted``: its 101 was counted when written)."""
        stats = self.stats
        stats.downstream_rq_active -= 1
        if status and not counted:
            count_class(stats.responses, status)
        if self.ctx.access_logs:
            self._log(request, status, headers)
        self.task = None
        queue = self.queue
        queue.popleft()
        self.requests += 1
        if not keep_open or self.closing:
            self._close()
            return
        self._resume_reading()
        if queue:
            self._start(queue[0])
        else:
            self._went_idle()

    def _abandoned(self, request: Request) -> None:
        """The client went away before its response was written (flag DC)."""
        if self.codec_error is not None and self.transport is not None:
            # The request's body broke the codec after its response began: nothing
            # more can be said on this connection.
            self.transport.abort()
        request.info.set_flag("DC")
        request.info.response_code_details = "downstream_remote_disconnect"
        self.stats.downstream_rq_rx_reset += 1
        self.stats.downstream_rq_active -= 1
        if self.ctx.access_logs:
            self._log(request, 0, [])     # Envoy logs code 0 for a request it never answered

    def _log(self, request: Request, status: int, headers: list[tuple[str, str]]) -> None:
        log_access(self.ctx, request, status, headers)

    def _local_response(self, request: Request, reply: LocalReply) -> Response:
        return local_response(request, reply)

    def _frame(self, request: Request, response: Response) -> bool:
        """Add the server and framing headers; False when the connection must close after."""
        cfg = self.ctx.config
        headers = response.headers
        add_date_server(headers, cfg)
        keep_open = (request.keep_alive and response.keep_alive and not self.ctx.draining
                     and (request.body is None or request.body.complete))
        if cfg.max_requests_per_connection and self.requests + 1 >= cfg.max_requests_per_connection:
            keep_open = False
        body = response.body
        status = response.status
        if response.chunked and request.version == "1.1":
            headers.append(("transfer-encoding", "chunked"))
        elif type(body) is bytes or body is None:
            response.chunked = False          # an HTTP/1.0 client gets a length instead
            if status not in (204, 304) and (status >= 200 or request.method == "HEAD"):
                length = len(body) if body else 0
                if request.method == "HEAD" and response.content_length is not None:
                    length = response.content_length
                headers.append(("content-length", str(length)))
        elif response.content_length is not None:
            headers.append(("content-length", str(response.content_length)))
        elif request.version == "1.1":
            response.chunked = True
            headers.append(("transfer-encoding", "chunked"))
        else:
            response.chunked = False
            keep_open = False   # an HTTP/1.0 client: the close frames the body
        if not keep_open:
            headers.append(("connection", "close"))
        return keep_open

    def _write_whole(self, request: Request, response: Response, keep_open: bool) -> bool:
        """Write a response whose body is at hand, in one write."""
        head = serialize_response_head(response.status, response.headers)
        body = response.body
        if not body or request.method == "HEAD" or response.status in (204, 304):
            self.transport.write(head)  # type: ignore[union-attr]
            sent = 0
        elif response.chunked:
            self.transport.write(head + encode_chunk(body) + LAST_CHUNK)  # type: ignore[union-attr,arg-type]
            sent = len(body)  # type: ignore[arg-type]
        else:
            self.transport.write(head + body)  # type: ignore[union-attr,operator]
            sent = len(body)  # type: ignore[arg-type]
        request.info.bytes_sent = sent
        self.stats.downstream_cx_tx_bytes_total += len(head) + sent
        if response.on_complete is not None:
            response.on_complete(True)
        return keep_open

    async def _write_streamed(self, request: Request, response: Response, keep_open: bool) -> bool:
        """Write the head, then copy the body as it arrives; False when the connection must close."""
        self.transport.write(serialize_response_head(response.status, response.headers))  # type: ignore[union-attr]
        bodyless = request.method == "HEAD" or response.status in (204, 304)
        ok = await self._stream(response.body, response.chunked, bodyless, request.info)  # type: ignore[arg-type]
        if response.on_complete is not None:
            response.on_complete(ok)
        return keep_open and ok

    async def _stream(self, body: BodyStream, chunked: bool, bodyless: bool, info: StreamInfo) -> bool:
        """Copy a streamed body downstream with backpressure; False if it broke off midway."""
        transport = self.transport
        stats = self.stats
        try:
            async for chunk in body:
                if bodyless:
                    continue
                stats.downstream_cx_tx_bytes_total += len(chunk)
                info.bytes_sent += len(chunk)
                transport.write(encode_chunk(chunk) if chunked else chunk)  # type: ignore[union-attr]
                if self.write_paused:
                    await self.wait_writable()
                    if self.closing:
                        return False
        except BodyReset as reset:
            self.stats.downstream_rq_tx_reset += 1
            if type(reset) is DurationReached:
                self._reset_mid_body()
                return False
            # The upstream broke off mid-body: the client sees a truncated response
            # and a closed connection; as Envoy, the reset counts both ways and the log
            # line carries the upstream's break (flag and details).
            if isinstance(reset, UpstreamBodyReset):
                info.set_flag(reset.flag)
                info.response_code_details = reset.details
            stats.downstream_rq_rx_reset += 1
            transport.abort()  # type: ignore[union-attr]
            return False
        if chunked:
            transport.write(encode_last_chunk(body.trailers) if body.trailers else LAST_CHUNK)  # type: ignore[union-attr]
        return True

    # --- errors, idle, close -------------------------------------------------------

    def _reject(self, status: int, body: str, details: str) -> Headers:
        """A request refused before it reached the filter chain: reply and close; the
        reply's headers, for the access log."""
        self.stats.downstream_rq_total += 1
        self.stats.downstream_rq_http1_total += 1
        count_class(self.stats.responses, status)
        reply = LocalReply(status, body.encode(), "", details, close_connection=True)
        return self._send_and_close(reply)

    def refuse(self, head: RequestHead, authority: str, target: str, status: int,
                details: str) -> None:
        """_reject a request whose head was read, logging it as Envoy does (public:
        sidecar.http.upgrade refuses upgrades through it)."""
        headers = self._reject(status, "", details)
        if self.ctx.access_logs:
            request = Request(head.method, target, authority, "http", head.headers, None,
                              head.version)
            log_refused(self.ctx, request, self.peer, self.local, status, headers, details)

    def _send_and_close(self, reply: LocalReply) -> Headers:
        self.closing = True
        if self.queue:
            # A response is already in progress: we can't answer out of order.
            self.transport.abort()  # type: ignore[union-attr]
            return []
        response = local_reply.build_response(reply)
        headers = response.headers
        headers.append(("content-length", str(len(reply.body))))
        headers.append(("date", http_date()))
        headers.append(("server", self.ctx.config.server_name))
        headers.append(("connection", "close"))
        data = serialize_response_head(reply.status, headers) + reply.body
        self.stats.downstream_cx_tx_bytes_total += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        self.transport.close()  # type: ignore[union-attr]
        return headers

    def _reset_mid_body(self) -> None:
        """The proxy reset the stream after the response head went out (max_stream_duration):
        HTTP/1.1 can only end it with the connection.  As Envoy 1.40: what was written is
        flushed, the FIN follows DELAYED_CLOSE later (sooner if the client closes), and the
        reset counts both ways (downstream_rq_tx_reset, downstream_rq_rx_reset)."""
        self.stats.downstream_rq_rx_reset += 1
        self.closing = self.lingering = True
        self.ctx.loop.call_later(DELAYED_CLOSE, self.transport.close)  # type: ignore[union-attr]

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.lingering:
            self.transport.close()

    def _went_idle(self) -> None:
        timeout = self.ctx.config.idle_timeout
        if timeout is not None:
            self.idle.set(self.ctx.loop.time() + timeout)

    def _idle_timeout(self) -> None:
        if not self.queue and not self.closing:
            self.stats.downstream_cx_idle_timeout += 1
            self._close()

    def drain(self) -> None:
        """Server draining: close now if idle; otherwise the next response says Connection: close."""
        if not self.queue:
            self._close()

