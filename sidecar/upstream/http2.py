"""One HTTP/2 (h2c, prior knowledge) connection to an upstream host, its streams multiplexed.

Http2UpstreamConnection is the asyncio protocol around the h2 library's client
state machine.  Each request is an Http2Stream, which gives the router the same
verbs as an HTTP/1 upstream connection: ``send_head`` (here a header list with
the pseudo-headers), ``write`` / ``wait_writable`` (request body, within the
peer's flow-control windows), ``finish_request`` (END_STREAM, or trailers),
``route_deadline`` and ``abort`` (RST_STREAM CANCEL).  The response head comes
to the same kind of waiter: the head, and the body as bytes when the whole
response came in one read, else a BodyStream (with trailers, as gRPC needs).

Backpressure on the response: DATA is acknowledged (WINDOW_UPDATE) as it is
handed to the body stream, except while that stream is above its watermark: the
upstream then runs out of window and waits, so a slow reader never makes the
proxy buffer more than the window.

A GOAWAY drains the connection: no new streams; streams above its last stream
id were never processed and fail with UpstreamRefused (safe to send again), as
do streams the upstream refuses with RST_STREAM REFUSED_STREAM.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sidecar.codec.events import ResponseHead
from sidecar.codec.hpack import install as install_hpack
from sidecar.flow_control import WriteFlowControl
from sidecar.http.h2_state import Connection
from sidecar.http.message import BodyReset, BodyStream
from sidecar.timers import LazyDeadline
from sidecar.upstream.http1 import UpstreamClosed, UpstreamProtocolError, UpstreamTimeout

if TYPE_CHECKING:
    from sidecar.upstream.pool_h2 import Http2Pool

# Our receive windows (Envoy's defaults for http2_protocol_options: 256 MiB per stream,
# 1 MiB per connection, are larger; the response body's watermark bounds what we hold).
DEFAULT_STREAM_WINDOW = 256 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 1024 * 1024

# Request headers HTTP/2 forbids (RFC 9113 8.2.2): the router's HTTP/1 framing headers.
CONNECTION_SPECIFIC = frozenset(("connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade", "host"))


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


ResponseStart = tuple[ResponseHead, "bytes | BodyStream"]


class Http2Stream(WriteFlowControl):
    """One request/response exchange."""

    __slots__ = ("conn", "stream_id", "head_waiter", "body", "closed", "head_received",
                 "request_done", "response_done", "pending", "pending_size", "trailers",
                 "write_paused", "drain_waiter", "route_deadline", "unacked", "reading_paused",
                 "ended", "uploader")

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
        self.route_deadline = LazyDeadline(conn.loop, self.time_out)
        self.unacked = 0                 # DATA held back while the body stream is paused
        self.reading_paused = False
        # The task sending the request body while the response comes (the router's).
        self.uploader: asyncio.Future[None] | None = None

    # --- used by the router ----------------------------------------------------

    def send_head(self, headers: list[tuple[str, str]], end_stream: bool
                  ) -> asyncio.Future[ResponseStart]:
        """Open the stream with HEADERS; the response head comes to the future returned."""
        self.head_waiter = self.conn.loop.create_future()
        self.conn.open_stream(self, headers, end_stream)
        if end_stream:
            self.request_done = self.ended = True
        return self.head_waiter

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
        self._maybe_done()

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

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.acknowledge(self, unacked)

    def _resolve(self, outcome: ResponseStart | Exception) -> None:
        waiter, self.head_waiter = self.head_waiter, None
        if waiter is not None and not waiter.done():
            if isinstance(outcome, Exception):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)

    def deliver(self, head: ResponseHead, body: bytes | BodyStream) -> None:
        self.head_received = True
        self.route_deadline.clear()
        self._resolve((head, body))

    def fail(self, error: Exception) -> None:
        """The stream ended abnormally (reset, connection lost, refused)."""
        if self.closed:
            return
        self.closed = True
        self.route_deadline.cancel()
        self._resolve(error)
        if self.body is not None and not self.response_done:
            self.body.reset(BodyReset("upstream stream reset mid-body"))
        self.release_writers()

    def _maybe_done(self) -> None:
        if self.request_done and self.response_done and not self.closed:
            self.closed = True
            self.route_deadline.cancel()
            self.conn.stream_done(self)


class Http2UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Http2Pool, stream_window: int = DEFAULT_STREAM_WINDOW,
                 connection_window: int = DEFAULT_CONNECTION_WINDOW,
                 high_watermark: int = 1024 * 1024) -> None:
        self.pool = pool
        self.loop = asyncio.get_event_loop()
        self.high_watermark = high_watermark
        config = h2.config.H2Configuration(client_side=True, header_encoding="latin-1")
        self.h2 = Connection(config=config)
        install_hpack(self.h2)
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Http2Stream] = {}
        self.closed = False
        self.goaway = False              # no new streams (GOAWAY received, or closing)
        self.streams_opened = 0          # for max_requests_per_connection
        self.received_any = False
        self.idle_deadline = LazyDeadline(self.loop, self._idle_expired)
        self.ping_handle: asyncio.TimerHandle | None = None
        # Set once the server's first SETTINGS arrived: only then is its stream limit known
        # and the connection given streams.
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ping_timeout_handle: asyncio.TimerHandle | None = None
        self.send_pending = False        # a _send is scheduled for this loop iteration

    # --- capacity, as the pool sees it -------------------------------------------

    @property
    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if self.closed or self.goaway:
            return 0
        limit = min(self.h2.remote_settings.max_concurrent_streams, self.pool.max_streams)
        free = limit - len(self.streams)
        if self.pool.max_requests:
            free = min(free, self.pool.max_requests - self.streams_opened)
        return max(free, 0)

    # --- streams -----------------------------------------------------------------

    def new_stream(self) -> Http2Stream:
        self.idle_deadline.clear()
        stream = Http2Stream(self)
        self.streams_opened += 1
        if self.pool.max_requests and self.streams_opened >= self.pool.max_requests:
            self.goaway = True           # drained after its last stream, as Envoy
            self.pool.stats.upstream_cx_max_requests += 1
        return stream

    def open_stream(self, stream: Http2Stream, headers: list[tuple[str, str]],
                    end_stream: bool) -> None:
        if self.closed:
            stream.fail(UpstreamRefused())
            return
        sid = self.h2.get_next_available_stream_id()
        stream.stream_id = sid
        self.streams[sid] = stream
        try:
            self.h2.send_headers(sid, headers, end_stream=end_stream)
        except h2.exceptions.TooManyStreamsError:
            del self.streams[sid]
            stream.fail(UpstreamRefused())      # the server lowered its limit meanwhile
            return
        except h2.exceptions.ProtocolError as e:
            del self.streams[sid]
            stream.fail(UpstreamProtocolError(f"cannot open stream: {e}"))
            return
        self._send_soon()

    def flush_stream(self, stream: Http2Stream) -> None:
        """Send what the windows allow of the stream's pending body; END_STREAM when done."""
        h2c = self.h2
        sid = stream.stream_id
        try:
            while stream.pending:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    break
                piece = stream.pending[0]
                if len(piece) > window:
                    stream.pending[0] = piece[window:]
                    piece = piece[:window]
                else:
                    stream.pending.pop(0)
                stream.pending_size -= len(piece)
                h2c.send_data(sid, piece)
            if not stream.pending and stream.request_done and not stream.ended:
                stream.ended = True
                if stream.trailers:
                    h2c.send_headers(sid, stream.trailers, end_stream=True)
                else:
                    h2c.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.pending.clear()
            stream.pending_size = 0
        if stream.write_paused and stream.pending_size <= self.high_watermark // 2:
            stream.write_paused = False
            stream.release_writers()
        self._send_soon()

    def acknowledge(self, stream: Http2Stream, length: int) -> None:
        try:
            self.h2.acknowledge_received_data(length, stream.stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._send_soon()

    def reset_stream(self, stream: Http2Stream, code: int) -> None:
        self.streams.pop(stream.stream_id, None)
        if stream.stream_id and not self.closed:
            try:
                self.h2.reset_stream(stream.stream_id, code)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self._send_soon()
        stream.fail(UpstreamClosed(stream.head_received))
        self.pool.stream_released(self)
        self._maybe_idle()

    def stream_done(self, stream: Http2Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        self.pool.stream_released(self)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.streams or self.closed:
            return
        if self.goaway:
            self.close()
        elif self.pool.idle_timeout is not None:
            self.idle_deadline.set(self.loop.time() + self.pool.idle_timeout)

    def _idle_expired(self) -> None:
        if not self.streams and not self.closed:
            self.pool.stats.upstream_cx_idle_timeout += 1
            self.close()

    def close(self) -> None:
        """GOAWAY and close (the pool is done with this connection)."""
        if self.closed:
            return
        self.goaway = True
        try:
            self.h2.close_connection()
            self._send()
        except h2.exceptions.ProtocolError:
            pass
        self.pool.stats.upstream_cx_destroy_local += 1
        self.transport.close()  # type: ignore[union-attr]

    def _send_soon(self) -> None:
        """Write what h2 has queued at the end of this loop iteration: a request's HEADERS,
        DATA and END_STREAM (and those of the other streams started meanwhile) go out in
        one write syscall instead of one each."""
        if not self.send_pending:
            self.send_pending = True
            self.loop.call_soon(self._send)

    def _send(self) -> None:
        self.send_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed and not self.transport.is_closing():
            self.pool.stats.upstream_cx_tx_bytes_total += len(data)
            self.transport.write(data)

    # --- keepalive ---------------------------------------------------------------

    def start_keepalive(self, interval: float, timeout: float) -> None:
        """PING every ``interval``; no ACK within ``timeout`` closes the connection."""
        def ping() -> None:
            if self.closed:
                return
            self.h2.ping(b"sidecar!")
            self._send()
            self.ping_timeout_handle = self.loop.call_later(timeout, self._keepalive_failed)
            self.ping_handle = self.loop.call_later(interval, ping)
        self.ping_handle = self.loop.call_later(interval, ping)

    def _keepalive_failed(self) -> None:
        if not self.closed:
            self.pool.stats.upstream_cx_destroy_local += 1
            self.transport.abort()  # type: ignore[union-attr]

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: min(self.stream_window, 2**31 - 1),
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        h2c.initiate_connection()
        if self.connection_window > 65535:
            h2c.increment_flow_control_window(self.connection_window - 65535)
        self._send()

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.pool.stats.upstream_cx_rx_bytes_total += len(data)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.pool.stats.upstream_cx_protocol_error += 1
            self._send()
            self._fail_all(UpstreamProtocolError(f"HTTP/2 protocol error: {e}"))
            self.transport.abort()  # type: ignore[union-attr]
            return
        self._handle(events)
        self._send()

    def _handle(self, events: list[Any]) -> None:
        streams = self.streams
        # Heads not handed over yet in this batch, with their body so far: a response
        # that is whole within one read goes up as bytes, with no body stream.
        starting: dict[int, tuple[ResponseHead, list[bytes]]] = {}
        trailers_of: dict[int, list[tuple[str, str]]] = {}
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    continue
                started = starting.get(event.stream_id)
                if started is not None:
                    started[1].append(event.data)
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                else:
                    stream.body.feed(event.data)  # type: ignore[union-attr]
                    if stream.reading_paused:
                        stream.unacked += event.flow_controlled_length
                    else:
                        self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)
            elif kind is h2.events.ResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    continue
                head = _response_head(event.headers)
                if head is None:
                    self.reset_stream(stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    continue
                starting[event.stream_id] = (head, [])
            elif kind is h2.events.TrailersReceived:
                trailers_of[event.stream_id] = list(event.headers)     # StreamEnded follows
            elif kind is h2.events.StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is None:
                    continue
                trailers = trailers_of.pop(event.stream_id, None)
                started = starting.pop(event.stream_id, None)
                stream.response_done = True
                if started is not None and trailers is None:
                    head, chunks = started
                    stream.deliver(head, b"".join(chunks))
                else:
                    if started is not None:
                        self._start_body(stream, *started)
                    if stream.body is not None:
                        stream.body.feed_eof(trailers)
                stream._maybe_done()
            elif kind is h2.events.StreamReset:
                stream = streams.pop(event.stream_id, None)
                starting.pop(event.stream_id, None)
                if stream is not None:
                    if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                        stream.fail(UpstreamRefused())
                    else:
                        self.pool.stats.upstream_rq_rx_reset += 1
                        stream.fail(UpstreamReset(event.error_code))
                    self.pool.stream_released(self)
            elif kind is h2.events.WindowUpdated:
                targets = ([streams[event.stream_id]] if event.stream_id in streams
                           else list(streams.values()) if event.stream_id == 0 else [])
                for stream in targets:
                    if stream.pending or (stream.request_done and not stream.ended):
                        self.flush_stream(stream)
            elif kind is h2.events.RemoteSettingsChanged:
                if not self.ready.done():
                    self.ready.set_result(None)
                self.pool.stream_released(self)          # capacity may have grown
            elif kind is h2.events.ConnectionTerminated:
                self.goaway = True
                last = event.last_stream_id or 0
                for sid in [s for s in streams if s > last]:
                    streams.pop(sid).fail(UpstreamRefused())
                self.pool.stream_released(self)
                if not streams:
                    self.transport.close()  # type: ignore[union-attr]
            elif kind is h2.events.PingAckReceived:
                if self.ping_timeout_handle is not None:
                    self.ping_timeout_handle.cancel()
                    self.ping_timeout_handle = None
        for sid, (head, chunks) in starting.items():
            stream = streams.get(sid)
            if stream is not None:
                self._start_body(stream, head, chunks)
        self._maybe_idle()

    def _start_body(self, stream: Http2Stream, head: ResponseHead, chunks: list[bytes]) -> None:
        body = stream.body = BodyStream(self.high_watermark, stream.pause_reading,
                                        stream.resume_reading)
        for chunk in chunks:
            body.feed(chunk)
        stream.deliver(head, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("closed before the server's SETTINGS"))
        self.idle_deadline.cancel()
        for handle in (self.ping_handle, self.ping_timeout_handle):
            if handle is not None:
                handle.cancel()
        self._fail_all(None)
        self.pool.lost(self)

    def _fail_all(self, error: Exception | None) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(error if error is not None else UpstreamClosed(stream.head_received))


def _response_head(headers: list[tuple[str, str]]) -> ResponseHead | None:
    """The response head from HEADERS (h2 has validated the pseudo-headers)."""
    status = 0
    regular = []
    length: int | None = None
    for name, value in headers:
        if name == ":status":
            status = int(value)
        elif name[0] != ":":
            regular.append((name, value))
            if name == "content-length":
                length = int(value) if value.isdigit() else None
    if not 200 <= status <= 999:
        return None
    return ResponseHead(status, "", "2", regular, True, False, length)


def request_headers(method: str, path: str, authority: str, scheme: str,
                    headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """HTTP/1-style request parts as an HTTP/2 header list (connection headers dropped;
    ``te`` kept only as ``trailers``, RFC 9113 8.2.2)."""
    out = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
    for name, value in headers:
        if name in CONNECTION_SPECIFIC or (name == "te" and value.lower() != "trailers"):
            continue
        out.append((name, value))
    return out
