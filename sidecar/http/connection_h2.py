"""The HTTP/2 connection manager: one downstream h2c connection, its streams served concurrently.

An ``asyncio.Protocol`` over our sans-IO HTTP/2 codec (codec/http2.py).  This module owns the
connection: our SETTINGS, the dispatch of the codec's events, the writes (coalesced per
loop iteration), abuse defences, protocol errors, GOAWAY, drain, idle and close.
Its streams are served by two modules of plain functions over its state:

- h2_intake.py: HEADERS, DATA, trailers and RST_STREAM into ``Request`` objects
  and their bodies, each handled by the same filter chain as HTTP/1 (``ctx.handler``)
  in a task, or by Router.start's callback path without one;
- h2_respond.py: responses written back as HEADERS, DATA and trailers, and each
  stream's end counted and access-logged.

Flow control both ways (RFC 9113 5.2): request bodies hold the client's window
while the upstream is slow (h2_intake.py); response bodies wait for the client's
windows and for the socket to drain (h2_respond.py, and pause_writing here).

Abuse defences (h2_guard.py): Envoy's flood limits, premature (rapid) resets,
header list size and count limits (RST_STREAM INTERNAL_ERROR on that stream,
as Envoy), and protocol errors: GOAWAY with the codec's error code, then close.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import h2.errors
import h2.exceptions

from sidecar.codec.http2 import H2Connection
from sidecar.codec.http2_events import (DataReceived, PriorityUpdated, RemoteSettingsChanged,
                                        RequestReceived, StreamReset, TrailersReceived,
                                        WindowUpdated)
from sidecar.http.h2_guard import FloodGuard
from sidecar.http.h2_intake import (dispatch, malformed, on_data, on_request, on_reset,
                                     on_trailers)
from sidecar.http.h2_respond import abandon, on_window_update, wake_blocked
from sidecar.http.h2_stream import H2Stream
from sidecar.http.message import BodyReset
from sidecar.timers import LazyDeadline

if TYPE_CHECKING:
    from sidecar.http.context import HcmContext

# A header block may decode past max_request_headers_kb (we then reset that stream, as
# Envoy): this much more is decoded before h2 stops it as an HPACK bomb and the
# connection ends (ENHANCE_YOUR_CALM).
_DECODE_SLACK = 256 * 1024
_ERR = h2.errors.ErrorCodes
# Envoy's details for a malformed request: a pseudo-header missing or not allowed with the
# others (the codec's messages for those say so), else a field that is invalid in itself.
_MESSAGING_RULE = "http2.violation.of.messaging.rule"
_INVALID_FIELD = "http2.invalid.header.field"
_RULES = ("missing mandatory", "does not have an :authority", "ordinary connect")


class Http2Connection(asyncio.Protocol):
    """One downstream HTTP/2 connection and its streams."""

    def __init__(self, ctx: HcmContext) -> None:
        self.ctx = ctx
        self.stats = ctx.stats
        self.h2stats: Any = None
        opts = ctx.config.http2
        # Our SETTINGS go out with the first answer: a client that turns out not to speak
        # HTTP/2 gets nothing (as from Envoy).  Responses go out as the router built them
        # (no normalizing or checking on the way out).
        self.h2 = H2Connection(
            False, None, opts.max_concurrent_streams, opts.initial_stream_window_size,
            opts.initial_connection_window_size,
            ctx.config.max_request_headers_kb * 1024 + _DECODE_SLACK,
            validate_outbound=False, normalize_outbound=False)
        self.guard = FloodGuard(opts)
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
        self.arrived: list[H2Stream] = []    # new streams with a body, served after the read
        # Streams whose response waits for the client's window (WINDOW_UPDATE wakes them).
        self.window_blocked: dict[int, H2Stream] = {}

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
        self.h2.initiate_connection()
        self.went_idle()

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
            if kind is DataReceived:
                on_data(self, event)
            elif kind is RequestReceived:
                on_request(self, event)
            elif kind is StreamReset:
                on_reset(self, event.stream_id)
            elif kind is WindowUpdated:
                on_window_update(self, event.stream_id)
            elif kind is TrailersReceived:
                on_trailers(self, event)
            elif kind is PriorityUpdated:
                self.flood_check(self.guard.priority_frame())
            elif kind is RemoteSettingsChanged:
                wake_blocked(self)       # a new initial window may have opened them all
            # A client's GOAWAY (ConnectionTerminated) changes nothing: its open streams are
            # answered and, as Envoy, the connection is left for the client (or the idle
            # timeout) to close.
            if self.closing:
                return
        if self.arrived:
            arrived, self.arrived = self.arrived, []
            for stream in arrived:
                dispatch(self, stream)
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
            abandon(self, stream)
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

    # --- writing, errors, idle, close ---------------------------------------------------------------

    def flush_soon(self) -> None:
        """Write what the codec has queued at the end of this loop iteration: the frames of every
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
                self.abort()

    def flood_check(self, stat: str) -> bool:
        """An inbound flood: count it and close the connection (as Envoy, no GOAWAY)."""
        if not stat:
            return False
        setattr(self.h2stats, stat, getattr(self.h2stats, stat) + 1)
        self.abort()
        return True

    def abort(self) -> None:
        """Drop the connection at once, unwritten frames and all (floods, rapid resets)."""
        self.closing = True
        self.transport.abort()  # type: ignore[union-attr]

    def _protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        """The client broke HTTP/2: the codec queued a GOAWAY with the error's code; send it
        and close."""
        self.stats.downstream_cx_protocol_error += 1
        text = str(error).lower()
        if "preamble" in text:
            # Not HTTP/2 at all (no client preface): close without a word, as Envoy.
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]
            return
        malformed_stream = self.h2.malformed_stream
        if isinstance(error, h2.exceptions.DenialOfServiceError):
            self.h2stats.header_list_size_too_large += 1
        elif "continuation" in text:
            self.h2stats.header_overflow += 1       # a header block without end
        elif malformed_stream or "header" in text or "pseudo" in text:
            # A malformed request (RFC 9113 8.1.1), not a framing error: Envoy's messaging error.
            self.h2stats.rx_messaging_error += 1
        self.close_with(None)
        if malformed_stream:
            # Envoy's codec had opened the stream before refusing its headers: it is
            # counted and logged (after the close: nothing more is written for it).
            malformed(self, malformed_stream, _MESSAGING_RULE if any(
                rule in text for rule in _RULES) else _INVALID_FIELD)

    def close_with(self, code: int | None, protocol_error: bool = False) -> None:
        """Send a GOAWAY (``code``, or the one the codec already queued) and close."""
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

    def close(self) -> None:
        """GOAWAY (NO_ERROR) and close."""
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

    def after_stream(self) -> None:
        """A stream is over: with none left, close if draining, else wait idle_timeout."""
        if not self.streams:
            if self.draining:
                self.close()
            else:
                self.went_idle()

    def went_idle(self) -> None:
        timeout = self.ctx.config.idle_timeout
        if timeout is not None:
            self.idle.set(self.ctx.loop.time() + timeout)

    def _idle_timeout(self) -> None:
        if not self.streams and not self.closing:
            self.stats.downstream_cx_idle_timeout += 1
            self.close()

    def drain(self) -> None:
        """Server draining: GOAWAY now; close once the streams in flight are answered."""
        if self.draining or self.closing:
            return
        self.draining = True
        if not self.streams:
            self.close()
            return
        # Not close_connection: the streams in flight still have frames to receive.
        self.h2.send_goaway(_ERR.NO_ERROR, self.last_stream)
        self.h2stats.goaway_sent += 1
        self._flush()
