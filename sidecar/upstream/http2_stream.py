"""One request/response exchange on an upstream HTTP/2 connection (Http2Stream), and the
two ways the upstream can end one early (UpstreamRefused, UpstreamReset).

Http2Stream gives the router the same verbs as an HTTP/1 upstream connection
(sidecar/upstream/http1.py): ``send_head`` (here a header list with the
pseudo-headers, sidecar/upstream/http2_headers.py), ``write`` / ``wait_writable``
(request body, within the peer's flow-control windows), ``finish_request``
(END_STREAM, or trailers), ``set_deadline`` and ``abort`` (RST_STREAM CANCEL).
The response head comes to the same kind of waiter (or, on Router.start's path, the
same kind of callback: ``start``): the head, and the body as bytes when the whole
response came in one read, else a BodyStream (with trailers, as gRPC needs).

The stream holds its own state only; every frame goes through its connection
(sidecar/upstream/http2.py), which owns the HTTP/2 protocol state and the socket and
drives the stream with ``deliver`` / ``fail`` as events come in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.errors

from sidecar.codec.events import ResponseHead
from sidecar.flow_control import WriteFlowControl
from sidecar.http.message import BodyStream, UpstreamBodyReset
from sidecar.timers import LazyDeadline
from sidecar.upstream.http1 import (ResponseStart, UpstreamClosed, UpstreamProtocolError,
                                    UpstreamTimeout, hand_over)

if TYPE_CHECKING:
    from sidecar.upstream.http2 import Http2UpstreamConnection


class UpstreamRefused(UpstreamClosed):
    """The upstream did not process the stream (REFUSED_STREAM, or above a GOAWAY's last
    stream id): the request may be sent again, on another connection."""

    def __init__(self) -> None:
        super().__init__(received_any=False)


class UpstreamReset(UpstreamClosed):
    """The upstream reset the stream (RST_STREAM) before the response head."""

    def __init__(self, error_code: int) -> None:
        super().__init__(received_any=True)
        self.error_code = error_code


class Http2Stream(WriteFlowControl):
    """One request/response exchange."""

    __slots__ = ("conn", "stream_id", "head_waiter", "body", "closed", "head_received",
                 "request_done", "response_done", "pending", "pending_size", "trailers",
                 "write_paused", "drain_waiter", "route_deadline", "unacked", "reading_paused",
                 "ended", "uploader", "on_head")

    def __init__(self, conn: Http2UpstreamConnection) -> None:
        self.conn = conn
        self.stream_id = 0
        self.head_waiter: asyncio.Future[ResponseStart] | None = None
        self.body: BodyStream | None = None
        self.closed = False              # reset, or the connection is gone
        self.head_received = False
        self.request_done = False
        self.response_done = False
        self.ended = False               # END_STREAM sent
        self.pending: list[bytes] = []   # request body waiting for window
        self.pending_size = 0
        self.trailers: list[tuple[str, str]] | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        # Made when the route has a timeout, dropped when the stream ends: it holds the
        # stream (its callback), and a cycle would leave the stream to the cyclic GC.
        self.route_deadline: LazyDeadline | None = None
        self.unacked = 0                 # DATA held back while the body stream is paused
        self.reading_paused = False
        # The task sending the request body while the response comes (the router's).
        self.uploader: asyncio.Future[None] | None = None
        # Router.start's callback for the response head (instead of ``head_waiter``).
        self.on_head: Callable[[ResponseStart | Exception], None] | None = None

    # --- used by the router ----------------------------------------------------

    def send_head(self, headers: list[tuple[str, str]], end_stream: bool
                  ) -> asyncio.Future[ResponseStart]:
        """Open the stream with HEADERS; the response head comes to the future returned."""
        self.head_waiter = self.conn.loop.create_future()
        self.conn.open_stream(self, headers, end_stream)
        if end_stream:
            self.request_done = self.ended = True
        return self.head_waiter

    def start(self, headers: list[tuple[str, str]], end_stream: bool,
              on_head: Callable[[ResponseStart | Exception], None]) -> None:
        """``send_head`` for Router.start's path: the response head (or the failure) is
        passed to ``on_head``, from the connection's callback."""
        self.on_head = on_head
        self.conn.open_stream(self, headers, end_stream)
        if end_stream:
            self.request_done = self.ended = True

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        self.conn.flush_stream(self)
        if self.pending_size > self.conn.high_watermark:
            self.write_paused = True

    def finish_request(self, trailers: list[tuple[str, str]] | None = None) -> None:
        """The whole request body has been written: END_STREAM (on the trailers, if any)."""
        self.request_done = True
        self.trailers = trailers
        if not self.closed:
            self.conn.flush_stream(self)
        self.maybe_done()

    def set_deadline(self, when: float) -> None:
        """The route timeout: no response head by ``when`` (loop time) fails the wait."""
        if self.closed:
            return
        if self.route_deadline is None:
            self.route_deadline = LazyDeadline(self.conn.loop, self.time_out)
        self.route_deadline.set(when)

    def _drop_deadline(self) -> None:
        deadline, self.route_deadline = self.route_deadline, None
        if deadline is not None:
            deadline.cancel()

    def time_out(self) -> None:
        """The route timeout fired before the response head: fail the wait, reset the stream."""
        self._resolve(UpstreamTimeout())
        self.abort()

    def abort(self) -> None:
        """Reset the stream (the downstream went away, or the request timed out)."""
        self.stop_upload()
        if not self.closed:
            self.conn.reset_stream(self, h2.errors.ErrorCodes.CANCEL)

    def stop_upload(self) -> None:
        uploader, self.uploader = self.uploader, None
        if uploader is not None:
            uploader.cancel()

    # --- driven by the connection -------------------------------------------------

    # The response body's watermark callbacks: while paused, the connection holds back
    # the WINDOW_UPDATE for the DATA it feeds (``unacked``), so a slow reader makes the
    # upstream wait instead of the proxy buffer.
    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.acknowledge(self, unacked)

    def _resolve(self, outcome: ResponseStart | Exception) -> None:
        callback, self.on_head = self.on_head, None
        waiter, self.head_waiter = self.head_waiter, None
        hand_over(outcome, callback, waiter)

    def deliver(self, head: ResponseHead, body: bytes | BodyStream) -> None:
        self.head_received = True
        if self.route_deadline is not None:
            self.route_deadline.clear()
        self._resolve((head, body))

    def fail(self, error: Exception) -> None:
        """The stream ended abnormally (reset, connection lost, refused)."""
        if self.closed:
            return
        self.closed = True
        self._drop_deadline()
        self._resolve(error)
        if self.body is not None and not self.response_done:
            self.body.reset(mid_body_reset(error))
        self.release_writers()

    def maybe_done(self) -> None:
        """Once the router has finished the request and the response has ended, give the
        stream back to the connection, which frees its slot."""
        if self.request_done and self.response_done and not self.closed:
            self.closed = True
            self._drop_deadline()
            self.conn.stream_done(self)


def mid_body_reset(error: Exception) -> UpstreamBodyReset:
    """How a stream that ended after its response head is logged, as Envoy 1.40: a
    RST_STREAM is UR {remote_reset}, an HTTP/2 protocol error UPE {protocol_error}, the
    connection closing (GOAWAY included) UC {connection_termination}."""
    if isinstance(error, UpstreamReset):
        return UpstreamBodyReset("UR", "remote_reset")
    if isinstance(error, UpstreamProtocolError):
        return UpstreamBodyReset("UPE", "protocol_error")
    return UpstreamBodyReset("UC", "connection_termination")
