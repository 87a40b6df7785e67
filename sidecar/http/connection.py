"""The HTTP/1.1 connection manager: one downstream connection, parsed, routed, answered in order.

An ``asyncio.Protocol`` (the hot path): bytes go through the sans-IO parser;
each request goes through the filter chain in one long-lived task per
connection, so pipelined requests are answered in order.  Flow control both
ways: request bodies pause our reading above the watermark, responses wait
for the socket to drain.  Errors become responses here and only here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import TYPE_CHECKING

from sidecar.codec.events import Body, EndOfMessage, ParseError, RequestHead
from sidecar.codec.http1 import (LAST_CHUNK, MISSING_HOST, REASONS, encode_chunk, encode_last_chunk,
                                 serialize_response_head)
from sidecar.http import local_reply
from sidecar.http.access_log import render
from sidecar.http.dates import http_date
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyReset, BodyStream, Request, Response, StreamInfo
from sidecar.netinfo import is_loopback, local_address
from sidecar.stats import count_downstream_response
from sidecar.timers import LazyDeadline

if TYPE_CHECKING:
    from sidecar.http.context import HcmContext

log = logging.getLogger(__name__)

# Request headers not forwarded: the downstream hop's own (the router re-frames
# the body and writes Host), and one Envoy always sets itself.
_DROPPED = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                      "upgrade", "content-length", "host", "x-envoy-expected-rq-timeout-ms"))

# RFC 9562 UUIDv4: version nibble 4, variant bits 10.
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID_SET = (0x4 << 76) | (0x2 << 62)
_getrandbits = random.getrandbits


def _request_id() -> str:
    """A random UUIDv4 string without a syscall per request (uuid.uuid4 reads os.urandom)."""
    h = "%032x" % (_getrandbits(128) & _UUID_CLEAR | _UUID_SET)
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


class HttpConnection(asyncio.Protocol):
    def __init__(self, ctx: HcmContext) -> None:
        self.ctx = ctx
        self.stats = ctx.stats
        self.transport: asyncio.Transport | None = None
        self.parser = ctx.new_request_parser()
        self.queue: deque[Request] = deque()
        self.parsing: BodyStream | None = None   # body of the request being parsed
        self.task: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.reading_paused = False
        self.closing = False
        self.peer: tuple | None = None
        self.local: tuple | None = None
        self.remote_ip = ""
        self.idle = LazyDeadline(ctx.loop, self._idle_timeout)
        self.requests = 0

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
            self._protocol_error(e.status, e.details)
            return
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
        self._wake(None)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- request intake ----------------------------------------------------------

    def _on_head(self, head: RequestHead) -> None:
        cfg = self.ctx.config
        target = head.target
        authority = ""
        headers = []
        xfp = xff = request_id = -1     # positions in ``headers``, -1 when absent
        for name, value in head.headers:
            if name in _DROPPED:
                if name == "host" and not authority:
                    authority = value
                continue
            if name[0] == "x":
                if name == "x-forwarded-proto":
                    xfp = len(headers)
                elif name == "x-forwarded-for":
                    xff = len(headers)
                elif name == "x-request-id":
                    request_id = len(headers)
            headers.append((name, value))
        if head.version != "1.1":
            if not cfg.accept_http_10:
                self._protocol_error(426, "http1.http_10_not_allowed")
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
                self._reject(400, "", "http1.invalid_url")
                return
        if not authority:
            self._reject(400, "", "missing_host_header")
            return
        if head.upgrade:
            # No upgrade_configs support yet: Envoy answers 403 for an unconfigured upgrade.
            self._reject(403, "", "upgrade_failed")
            return
        if head.expect_continue:
            # Envoy answers 100-continue itself and strips Expect (proxy_100_continue off).
            headers = [h for h in headers if h[0] != "expect"]
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        if cfg.use_remote_address:
            # Edge proxy: this hop's peer is the client; Envoy appends it (this host's
            # own address when the peer is loopback), marks it external, and sets the
            # protocol it saw.
            if not cfg.skip_xff_append:
                peer = local_address() if is_loopback(self.remote_ip) else self.remote_ip
                if xff >= 0:
                    headers[xff] = ("x-forwarded-for", f"{headers[xff][1]},{peer}")
                else:
                    headers.append(("x-forwarded-for", peer))
            headers = [h for h in headers if h[0] != "x-envoy-external-address"]
            headers.append(("x-envoy-external-address", self.remote_ip))
            if xfp >= 0:
                headers[xfp] = ("x-forwarded-proto", "http")
            else:
                headers.append(("x-forwarded-proto", "http"))
        elif xfp < 0:
            headers.append(("x-forwarded-proto", "http"))
        if cfg.generate_request_id:
            if request_id < 0:
                headers.append(("x-request-id", _request_id()))
            elif cfg.use_remote_address and not cfg.preserve_external_request_id:
                # An external request's id is not trusted (Envoy regenerates it at the edge).
                headers[request_id] = ("x-request-id", _request_id())
        body = None
        if head.chunked or (head.content_length or 0) > 0:
            body = self.parsing = BodyStream(self.ctx.buffer_limit, self._pause_reading,
                                             self._resume_reading)
        request = Request(head.method, target, authority, "http", headers, body, head.version,
                          head.keep_alive, head.content_length, head.chunked, head.expect_continue)
        info = request.info
        info.downstream_remote_address = self.peer
        info.downstream_local_address = self.local
        self.queue.append(request)
        if len(self.queue) > 1:
            # Pipelined: hold the next requests (and their bodies) at the socket.
            self._pause_reading()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())
        else:
            self._wake(None)

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.closing and len(self.queue) <= 1:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _wake(self, _: object) -> None:
        waiter, self.wakeup = self.wakeup, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- serving -----------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer queued requests one at a time, in arrival order (RFC 9112 9.3.2)."""
        loop = asyncio.get_running_loop()
        queue = self.queue
        while not self.closing:
            if not queue:
                self.wakeup = loop.create_future()
                await self.wakeup
                continue
            request = queue[0]
            keep_open = await self._respond(request)
            queue.popleft()
            self.requests += 1
            if not keep_open:
                self._close()
                return
            if not queue:
                self._went_idle()
            self._resume_reading()

    async def _respond(self, request: Request) -> bool:
        """Run the request through the filter chain and write the response; False = close after."""
        ctx = self.ctx
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_http1_total += 1
        stats.downstream_rq_active += 1
        self.idle.clear()
        info = request.info
        info.start_time = ctx.loop.time()
        try:
            request.route = ctx.route_table.select(
                request.authority, request.path, request.method, request.headers, request.scheme)
            try:
                response = await ctx.handler(request)
            except LocalReply as reply:
                response = self._local_response(request, reply)
            except BodyReset:
                # The request body never finished: the client is gone or broke framing.
                info.set_flag("DC")
                stats.downstream_rq_rx_reset += 1
                return False
            except Exception:
                log.exception("bug: unhandled error answering %s %s", request.method, request.path)
                response = self._local_response(request, LocalReply(500, b"", "", "internal_error"))
            keep_open = await self._write(request, response)
            if ctx.access_logs:
                self._log(request, response.status, response.headers)
        except asyncio.CancelledError:
            info.set_flag("DC")
            stats.downstream_rq_rx_reset += 1
            if ctx.access_logs:
                self._log(request, 0, [])     # Envoy logs code 0 for a request it never answered
            raise
        finally:
            stats.downstream_rq_active -= 1
        count_downstream_response(stats, response.status)
        return keep_open

    def _log(self, request: Request, status: int, headers: list[tuple[str, str]]) -> None:
        info = request.info
        body = request.body
        info.bytes_received = body.received if isinstance(body, BodyStream) else 0
        duration = self.ctx.loop.time() - info.start_time
        for log_file, tokens in self.ctx.access_logs:
            log_file.write(render(tokens, request, status, headers, duration))

    def _local_response(self, request: Request, reply: LocalReply) -> Response:
        if reply.flag:
            request.info.set_flag(reply.flag)
        request.info.response_code_details = reply.details
        response = local_reply.build_response(reply, request.method == "HEAD")
        response.headers.append(("date", http_date()))
        return response

    async def _write(self, request: Request, response: Response) -> bool:
        """Write the response head and body downstream; False when the connection must close."""
        cfg = self.ctx.config
        headers = response.headers
        if cfg.server_header_transformation == "OVERWRITE":
            # The router already dropped the upstream's Server header.
            headers.append(("server", cfg.server_name))
        elif cfg.server_header_transformation == "APPEND_IF_ABSENT":
            if not any(h[0] == "server" for h in headers):
                headers.append(("server", cfg.server_name))
        keep_open = (request.keep_alive and response.keep_alive and not self.ctx.draining
                     and (request.body is None or request.body.complete))
        if cfg.max_requests_per_connection and self.requests + 1 >= cfg.max_requests_per_connection:
            keep_open = False
        body = response.body
        status = response.status
        bodyless = request.method == "HEAD" or status in (204, 304) or status < 200
        chunked = False
        if type(body) is bytes or body is None:
            if not bodyless or request.method == "HEAD":
                length = len(body) if body else 0
                if request.method == "HEAD" and response.content_length is not None:
                    length = response.content_length
                if status not in (204, 304):
                    headers.append(("content-length", str(length)))
        elif response.content_length is not None:
            headers.append(("content-length", str(response.content_length)))
        elif request.version == "1.1":
            chunked = True
            headers.append(("transfer-encoding", "chunked"))
        else:
            keep_open = False   # an HTTP/1.0 client: the close frames the body
        if not keep_open:
            headers.append(("connection", "close"))
        head = serialize_response_head(status, headers)
        transport = self.transport
        ok = True
        if type(body) is bytes or body is None:
            transport.write(head + body if body and not bodyless else head)  # type: ignore[union-attr]
            sent = len(body) if body and not bodyless else 0
            request.info.bytes_sent = sent
            self.stats.downstream_cx_tx_bytes_total += len(head) + sent
        else:
            transport.write(head)  # type: ignore[union-attr]
            ok = await self._stream(body, chunked, bodyless, request.info)
            if not ok:
                keep_open = False
        if response.on_complete is not None:
            response.on_complete(ok)
        if ok and not keep_open:
            return False
        return keep_open and not self.closing

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
                    self.drain_waiter = asyncio.get_running_loop().create_future()
                    await self.drain_waiter
                    if self.closing:
                        return False
        except BodyReset:
            # The upstream broke off mid-body: the client sees a truncated response
            # and a closed connection, as with Envoy.
            self.stats.downstream_rq_tx_reset += 1
            transport.abort()  # type: ignore[union-attr]
            return False
        if chunked:
            transport.write(encode_last_chunk(body.trailers) if body.trailers else LAST_CHUNK)  # type: ignore[union-attr]
        return True

    # --- errors, idle, close -------------------------------------------------------

    def _reject(self, status: int, body: str, details: str) -> None:
        """A request refused before it reached the filter chain: reply and close."""
        self.stats.downstream_rq_total += 1
        self.stats.downstream_rq_http1_total += 1
        count_downstream_response(self.stats, status)
        reply = LocalReply(status, body.encode(), "", details, close_connection=True)
        self._send_and_close(reply)

    def _protocol_error(self, status: int, details: str) -> None:
        self.stats.downstream_cx_protocol_error += 1
        if status == 431:
            self.stats.downstream_rq_too_large += 1
        # Envoy's codec errors carry the reason phrase as a text/plain body; a missing
        # Host is the connection manager's reject there, with an empty body.
        body = "" if details == MISSING_HOST else REASONS.get(status, "")
        self._reject(status, body, details)

    def _send_and_close(self, reply: LocalReply) -> None:
        self.closing = True
        if self.queue:
            # A response is already in progress: we can't answer out of order.
            self.transport.abort()  # type: ignore[union-attr]
            return
        response = local_reply.build_response(reply)
        headers = response.headers
        headers.append(("content-length", str(len(reply.body))))
        headers.append(("date", http_date()))
        headers.append(("server", self.ctx.config.server_name))
        headers.append(("connection", "close"))
        self.transport.write(serialize_response_head(reply.status, headers) + reply.body)  # type: ignore[union-attr]
        self.transport.close()  # type: ignore[union-attr]

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
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

