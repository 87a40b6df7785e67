"""One HTTP/2 (h2c, prior knowledge) connection to an upstream host, its streams multiplexed.

Http2UpstreamConnection is the asyncio protocol around our HTTP/2 codec's client
side (codec/http2.py): it opens, flushes and resets its streams' frames, and turns the codec's
events into calls on the streams (sidecar/upstream/http2_stream.py), which are
what the router holds.  Its pool (sidecar/upstream/pool_h2.py) asks it for room
(``capacity``) and new streams, and hears back when a stream ends or it closes.

Writes are coalesced: what the codec queues during one loop iteration goes out in one
write (``_send_soon``).

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

import h2.errors
import h2.exceptions

from sidecar.codec.events import ResponseHead
from sidecar.codec.http2 import H2Connection
from sidecar.codec.http2_events import (ConnectionTerminated, DataReceived, PingAckReceived,
                                        RemoteSettingsChanged, ResponseReceived, StreamReset,
                                        TrailersReceived, WindowUpdated)
from sidecar.http.message import BodyStream
from sidecar.timers import LazyDeadline
from sidecar.upstream.cx_destroy import CLOSER_LOCAL, CLOSER_NONE, CLOSER_REMOTE
from sidecar.upstream.http1 import UpstreamClosed, UpstreamProtocolError
from sidecar.upstream.http2_headers import response_head
from sidecar.upstream.http2_stream import Http2Stream, UpstreamRefused, UpstreamReset

if TYPE_CHECKING:
    from sidecar.upstream.pool_h2 import Http2Pool

# Our receive windows when the cluster's http2_protocol_options set none: what is received
# is acknowledged only as the downstream takes it, so the response body's watermark, not
# these, bounds what we hold.
DEFAULT_STREAM_WINDOW = 256 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 1024 * 1024


class Http2UpstreamConnection(asyncio.Protocol):
    """One h2c connection, owned by its Http2Pool: the HTTP/2 protocol state, the socket, and
    the Http2Streams open on it (``streams``, by stream id)."""

    def __init__(self, pool: Http2Pool, stream_window: int = DEFAULT_STREAM_WINDOW,
                 connection_window: int = DEFAULT_CONNECTION_WINDOW,
                 high_watermark: int = 1024 * 1024) -> None:
        self.pool = pool
        self.loop = asyncio.get_event_loop()
        self.high_watermark = high_watermark
        self.h2 = H2Connection(True, "latin-1", 0, min(stream_window, 2**31 - 1),
                               connection_window)
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
        # Who closed first, and whether streams were open then (sidecar.upstream.cx_destroy):
        # the pool counts the close by them.
        self.closer = CLOSER_NONE
        self.active_rq = False

    # --- capacity, as the pool sees it -------------------------------------------

    @property
    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if self.closed or self.goaway:
            return 0
        limit = min(self.h2.remote_max_concurrent_streams, self.pool.max_streams)
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
                # The last piece of a finished body without trailers ends the stream itself.
                last = not stream.pending and stream.request_done and not stream.trailers
                h2c.send_data(sid, piece, end_stream=last)
                if last:
                    stream.ended = True
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
        self.closed_locally()
        self.transport.close()  # type: ignore[union-attr]

    def closed_locally(self) -> None:
        """Sidecar ends the connection (unless the upstream already did): a local destroy."""
        if self.closer == CLOSER_NONE:
            self.closer = CLOSER_LOCAL

    def _send_soon(self) -> None:
        """Write what the codec has queued at the end of this loop iteration: a request's HEADERS,
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
            self.closed_locally()
            self.transport.abort()  # type: ignore[union-attr]

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self._send()

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.pool.stats.upstream_cx_rx_bytes_total += len(data)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.pool.stats.upstream_cx_protocol_error += 1
            self._send()
            # Its streams fail first, as a protocol error (not a connection termination):
            # Envoy counts no *_with_active_rq for this close.
            self._fail_all(UpstreamProtocolError(f"HTTP/2 protocol error: {e}"))
            self.closed_locally()
            self.transport.abort()  # type: ignore[union-attr]
            return
        self._handle(events)
        self._send()

    def _handle(self, events: list[Any]) -> None:
        streams = self.streams
        h2c = self.h2
        # Heads not handed over yet in this batch, with their body so far: a response
        # that is whole within one read goes up as bytes, with no body stream.
        starting: dict[int, tuple[ResponseHead, list[bytes]]] = {}
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                sid = event.stream_id
                stream = streams.get(sid)
                if stream is None:
                    h2c.acknowledge_received_data(event.flow_controlled_length, sid)
                    continue
                started = starting.get(sid)
                if started is not None:
                    started[1].append(event.data)
                    h2c.acknowledge_received_data(event.flow_controlled_length, sid)
                else:
                    stream.body.feed(event.data)  # type: ignore[union-attr]
                    if stream.reading_paused:
                        stream.unacked += event.flow_controlled_length
                    else:
                        h2c.acknowledge_received_data(event.flow_controlled_length, sid)
                if event.ended:
                    self._ended(stream, starting.pop(sid, None), None)
            elif kind is ResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    continue
                head = response_head(event.headers)
                if head is None:
                    self.reset_stream(stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    continue
                if event.ended:
                    self._ended(stream, (head, []), None)
                else:
                    starting[event.stream_id] = (head, [])
            elif kind is TrailersReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    self._ended(stream, starting.pop(event.stream_id, None), list(event.headers))
            elif kind is StreamReset:
                stream = streams.pop(event.stream_id, None)
                starting.pop(event.stream_id, None)
                if stream is not None:
                    if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                        stream.fail(UpstreamRefused())
                    else:
                        self.pool.stats.upstream_rq_rx_reset += 1
                        stream.fail(UpstreamReset(event.error_code))
                    self.pool.stream_released(self)
            elif kind is WindowUpdated:
                targets = ([streams[event.stream_id]] if event.stream_id in streams
                           else list(streams.values()) if event.stream_id == 0 else [])
                for stream in targets:
                    if stream.pending or (stream.request_done and not stream.ended):
                        self.flush_stream(stream)
            elif kind is RemoteSettingsChanged:
                if not self.ready.done():
                    self.ready.set_result(None)
                self.pool.stream_released(self)          # capacity may have grown
            elif kind is ConnectionTerminated:
                self.goaway = True
                last = event.last_stream_id
                for sid in [s for s in streams if s > last]:
                    streams.pop(sid).fail(UpstreamRefused())
                self.pool.stream_released(self)
                if not streams:
                    self.closed_locally()
                    self.transport.close()  # type: ignore[union-attr]
            elif kind is PingAckReceived:
                if self.ping_timeout_handle is not None:
                    self.ping_timeout_handle.cancel()
                    self.ping_timeout_handle = None
        for sid, (head, chunks) in starting.items():
            stream = streams.get(sid)
            if stream is not None:
                self._start_body(stream, head, chunks)
        self._maybe_idle()

    def _ended(self, stream: Http2Stream, started: tuple[ResponseHead, list[bytes]] | None,
               trailers: list[tuple[str, str]] | None) -> None:
        """The response is whole: handed up as bytes when its head came in this same read
        and it has no trailers, else its body stream ends."""
        stream.response_done = True
        if started is None:
            if stream.body is not None:
                stream.body.feed_eof(trailers)
        elif trailers is None:
            stream.deliver(started[0], b"".join(started[1]))
        else:
            # Whole, with trailers: the body stream is handed up already ended, so that
            # whoever takes the head may write the whole response at once.
            body = self._new_body(stream, started[1])
            body.feed_eof(trailers)
            stream.deliver(started[0], body)
        # The body's reader holds it now; the stream letting go breaks the cycle through
        # the body's pause/resume callbacks (the stream is freed without the cyclic GC).
        stream.body = None
        stream.maybe_done()

    def _start_body(self, stream: Http2Stream, head: ResponseHead, chunks: list[bytes]) -> None:
        stream.deliver(head, self._new_body(stream, chunks))

    def _new_body(self, stream: Http2Stream, chunks: list[bytes]) -> BodyStream:
        body = stream.body = BodyStream(self.high_watermark, stream.pause_reading,
                                        stream.resume_reading)
        for chunk in chunks:
            body.feed(chunk)
        return body

    def eof_received(self) -> bool | None:
        if self.closer == CLOSER_NONE:
            self.closer = CLOSER_REMOTE         # the upstream closed first
        return None                             # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # Streams still open are reset by this close: Envoy's closed_with_active_rq.
        self.active_rq = bool(self.streams)
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

