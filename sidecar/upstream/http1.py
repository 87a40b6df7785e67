"""One HTTP/1.1 connection to an upstream host: writes a request, parses the response.

Never pipelined: one request at a time, then back to the pool when both the
request and the response are complete and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidecar.codec.events import Body, EndOfMessage, ParseError, ResponseHead
from sidecar.flow_control import WriteFlowControl
from sidecar.http.message import BodyStream, UpstreamBodyReset
from sidecar.timers import LazyDeadline
from sidecar.upstream.cx_destroy import CLOSER_LOCAL, CLOSER_NONE, CLOSER_REMOTE

if TYPE_CHECKING:
    from sidecar.upstream.pool import Http1Pool


class UpstreamClosed(Exception):
    """The connection ended before a complete response head.

    ``received_any`` tells whether any response byte came first: with none, a
    reused connection may simply have been closed by the upstream while idle
    (the "503 UC" race), and the request can be sent again on a fresh one.
    """

    def __init__(self, received_any: bool) -> None:
        super().__init__("upstream connection closed before the response head")
        self.received_any = received_any


class UpstreamProtocolError(Exception):
    """The upstream sent bytes that are not a valid HTTP/1 response."""


class UpstreamTimeout(Exception):
    """The route timeout expired before the response head arrived."""


# What the head waiter resolves to: the head, and the body as bytes when the whole
# response arrived in one read (the common small response: no stream needed), else
# a BodyStream fed as the rest arrives.
ResponseStart = tuple[ResponseHead, "bytes | BodyStream"]


def hand_over(outcome: ResponseStart | Exception,
              callback: Callable[[ResponseStart | Exception], None] | None,
              waiter: asyncio.Future[ResponseStart] | None) -> None:
    """A response head (or the failure) to whoever waits for it: Router.start's callback,
    or the coroutine path's future."""
    if callback is not None:
        callback(outcome)
    elif waiter is not None and not waiter.done():
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


class Http1UpstreamConnection(WriteFlowControl, asyncio.Protocol):
    __slots__ = ("pool", "parser", "transport", "head_waiter", "on_head", "body", "closed",
                 "received_any", "request_done", "response_done", "reusable",
                 "requests", "drain_waiter", "write_paused", "idle_deadline", "interim",
                 "route_deadline",
                 "high_watermark", "closer", "tunneled")

    def __init__(self, pool: Http1Pool, parser: Any, high_watermark: int) -> None:
        self.pool = pool
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        # Whoever waits for the response head: a future (the router's coroutine path)
        # or a callback (its synchronous path, Router.start).
        self.head_waiter: asyncio.Future[ResponseStart] | None = None
        self.on_head: Callable[[ResponseStart | Exception], None] | None = None
        self.body: BodyStream | None = None
        self.closed = False
        self.received_any = False
        self.request_done = False
        self.response_done = False
        self.reusable = True
        self.requests = 0
        self.drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        loop = asyncio.get_event_loop()
        self.idle_deadline = LazyDeadline(loop, self._idle_expired)     # while pooled
        self.route_deadline = LazyDeadline(loop, self.time_out)        # while awaiting a head
        self.interim = False
        self.high_watermark = high_watermark
        # Who closed first (sidecar.upstream.cx_destroy): the pool counts the close by it.
        self.closer = CLOSER_NONE
        # Spliced to an upgraded client (sidecar/http/upgrade.py): an active request until
        # the tunnel ends, as in Envoy.
        self.tunneled = False

    # --- used by the router ----------------------------------------------------

    def send_head(self, data: bytes, method: str,
                  on_head: Callable[[ResponseStart | Exception], None] | None = None
                  ) -> asyncio.Future[ResponseStart] | None:
        """Write the request head (and any body bytes already at hand).

        The response head (or the error that ended the exchange) goes to
        ``on_head`` when given, else to the future returned.
        """
        self.requests += 1
        self.pool.rq_total += 1
        self.request_done = self.response_done = self.received_any = False
        self.body = None
        self.parser.expect(method)
        if on_head is None:
            self.head_waiter = asyncio.get_running_loop().create_future()
        else:
            self.on_head = on_head
        # Every byte written to the upstream counts, as Envoy counts its socket's writes:
        # the head (with any body bytes at hand) here, the rest of the body (chunk framing
        # included) in ``write``.
        self.pool.stats.upstream_cx_tx_bytes_total += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        return self.head_waiter

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.pool.stats.upstream_cx_tx_bytes_total += len(data)
            self.transport.write(data)  # type: ignore[union-attr]

    def finish_request(self) -> None:
        """The whole request has been written."""
        self.request_done = True
        if self.response_done:
            self._done()

    def _idle_expired(self) -> None:
        self.pool.idle_expired(self)

    def set_deadline(self, when: float) -> None:
        """The route timeout: no response head by ``when`` (loop time) fails the wait."""
        self.route_deadline.set(when)

    def time_out(self) -> None:
        """The route timeout fired: fail the wait for the head, and drop the connection."""
        self._resolve(UpstreamTimeout())
        self.abort()

    def abort(self) -> None:
        """Drop the connection (the downstream went away or the request timed out)."""
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.closed_locally()
            self.transport.abort()

    def close(self) -> None:
        """Close the connection from our side, after writing what is buffered."""
        if self.transport is not None and not self.closed:
            self.closed_locally()
            self.transport.close()

    def closed_locally(self) -> None:
        """Sidecar ends the connection (unless the upstream already did): a local destroy."""
        if self.closer == CLOSER_NONE:
            self.closer = CLOSER_LOCAL

    @property
    def active_rq(self) -> bool:
        """A request is in flight: sent, its response not complete (or spliced to a tunnel)."""
        return self.requests > 0 and (not self.response_done or self.tunneled)

    @property
    def usable(self) -> bool:
        return not self.closed and self.reusable

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(self.high_watermark)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.pool.stats.upstream_cx_rx_bytes_total += len(data)
        if self.head_waiter is None and self.on_head is None and self.body is None:
            # Bytes while idle: the upstream broke HTTP/1 framing; never reuse.
            self.reusable = False
            self.close()
            return
        try:
            events = self.parser.feed(data)
        except ParseError:
            self._protocol_error()
            return
        self._handle(events)

    def _handle(self, events: list[Any]) -> None:
        head: ResponseHead | None = None      # a head not handed over yet
        chunks: list[bytes] = []              # its body so far
        for event in events:
            kind = type(event)
            if kind is Body:
                if head is not None:
                    chunks.append(event.data)
                else:
                    self.body.feed(event.data)  # type: ignore[union-attr]
            elif kind is ResponseHead:
                if event.status < 200:
                    if event.status == 101:
                        self._switched(event)
                        return
                    self.interim = True   # 100 Continue / 103: not forwarded (as Envoy by default)
                    continue
                if not event.keep_alive:
                    self.reusable = False
                head = event
            elif kind is EndOfMessage:
                if self.interim:
                    self.interim = False
                    continue
                self.response_done = True
                if head is not None and not event.trailers:
                    self._deliver(head, chunks[0] if len(chunks) == 1 else b"".join(chunks))
                    head = None
                else:
                    if head is not None:
                        self._start_stream(head, chunks)
                        head = None
                    self.body.feed_eof(event.trailers)  # type: ignore[union-attr]
                if self.request_done:
                    self._done()
                else:
                    # Answered before the request was fully sent: the rest of the
                    # request may still be in flight, so never reuse (as Envoy).
                    self.reusable = False
        if head is not None:
            self._start_stream(head, chunks)

    def _switched(self, head: ResponseHead) -> None:
        """A 101: this connection now belongs to the router's caller, who either splices it
        to the client (sidecar.http.upgrade) or aborts it; it never returns to the pool.
        The bytes after the head go along as the "body"."""
        self.reusable = False
        self.response_done = True
        self._deliver(head, self.parser.take_tunnel_bytes())

    def _start_stream(self, head: ResponseHead, chunks: list[bytes]) -> None:
        transport = self.transport
        body = self.body = BodyStream(self.high_watermark, transport.pause_reading,  # type: ignore[union-attr]
                                      transport.resume_reading)  # type: ignore[union-attr]
        for chunk in chunks:
            body.feed(chunk)
        self._deliver(head, body)

    def _deliver(self, head: ResponseHead, body: bytes | BodyStream) -> None:
        self.route_deadline.clear()
        self._resolve((head, body))

    def _resolve(self, outcome: ResponseStart | Exception) -> None:
        """Hand the response head, or the error, to whoever waits for it (once)."""
        callback, self.on_head = self.on_head, None
        waiter, self.head_waiter = self.head_waiter, None
        hand_over(outcome, callback, waiter)

    def _done(self) -> None:
        if self.body is not None:
            # A streamed body whose reader is behind has paused our reading; the body holds
            # what came, and the connection goes back to the pool reading again (paused, the
            # next request's answer would wait for the old reader, forever if it is gone).
            self.transport.resume_reading()  # type: ignore[union-attr]
            self.body = None
        self.pool.release(self)

    def _protocol_error(self) -> None:
        self.reusable = False
        self.pool.stats.upstream_cx_protocol_error += 1
        self._fail(UpstreamProtocolError("invalid HTTP/1 response"))
        self.closed_locally()
        self.transport.abort()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.reusable = False
        if self.closer == CLOSER_NONE:
            # The upstream closed first: whatever we close meanwhile (a response that ends
            # here goes back to the pool, which closes it) is its close, as Envoy counts it.
            self.closer = CLOSER_REMOTE
        try:
            events = self.parser.feed_eof()
        except ParseError:
            self._protocol_error()
            return False
        self._handle(events)
        return False    # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.route_deadline.cancel()
        self.idle_deadline.cancel()
        self._fail(UpstreamClosed(self.received_any))
        self.release_writers()
        self.pool.lost(self)

    def _fail(self, error: Exception) -> None:
        if isinstance(error, UpstreamClosed) and self.received_any:
            # Closed inside the response head: Envoy answers 502 "protocol error".
            error = UpstreamProtocolError("connection closed inside the response head")
        self._resolve(error)
        body = self.body
        if body is not None and not self.response_done:
            # Closed (or RST) mid-body, or bad framing: to Envoy's HTTP/1 codec all are a
            # premature end of the message, a protocol error.
            body.reset(UpstreamBodyReset("UPE", "protocol_error"))

