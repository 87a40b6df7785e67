"""Our sans-IO HTTP/2 connection (RFC 9113), compiled: framing, stream states, flow control
and the connection-level frames of one connection, for either end.

It stands where h2's H2Connection stood on the hot path (h2's per-frame state machines
and hyperframe's frame objects were a third of the proxy's HTTP/2 CPU), with h2's
behaviour, which stays the reference the tests hold it against
(tests/codec/test_http2_codec.py feeds both the same bytes):

- ``receive_data(bytes)`` parses frames and returns events (codec/http2_events.py);
- ``send_headers``, ``send_data``, ``end_stream``, ``reset_stream``,
  ``acknowledge_received_data``, ``ping`` and ``close_connection`` queue frames, and
  ``data_to_send()`` takes what is queued;
- errors are h2's exceptions (h2.exceptions): a ``ProtocolError`` raised by
  ``receive_data`` has queued a GOAWAY with its ``error_code`` first; sending on a stream
  that is over raises ``StreamClosedError``.

Header blocks go through our compiled HPACK (codec/hpack.py) and h2's header rules
(http/h2_headers.py); the protocol's constants and single-value rules are in
codec/http2_frames.py.  The WINDOW_UPDATEs for received DATA are batched as h2 batches
them: a window is handed back once half of it was consumed (or, when it is shut, 1 KiB).

Deliberately left out, as nothing here uses them: server push (PUSH_PROMISE is a
protocol error: both ends announce ENABLE_PUSH 0), sending padding or priorities, the
HTTP/1.1 Upgrade to h2c, and ALTSVC (ignored, as unknown frame types are).
"""

from __future__ import annotations

from typing import Any, Final

from h2.exceptions import (DenialOfServiceError, FlowControlError, FrameDataMissingError,
                           FrameTooLargeError, InvalidBodyLengthError, InvalidSettingsValueError,
                           NoSuchStreamError, ProtocolError, StreamClosedError,
                           StreamIDTooLowError, TooManyStreamsError)
from hpack.exceptions import HPACKError, OversizedHeaderListError

from sidecar.codec.hpack import Decoder, Encoder
from sidecar.codec.http2_events import (ConnectionTerminated, DataReceived, PingAckReceived,
                                        PriorityUpdated, RemoteSettingsChanged, RequestReceived,
                                        ResponseReceived, StreamReset, TrailersReceived,
                                        WindowUpdated)
from sidecar.codec.http2_frames import (PREFACE, DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS,
                                         PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION,
                                         END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG,
                                         NO_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED,
                                         HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS,
                                         INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
                                         ENABLE_CONNECT_PROTOCOL, MAX_WINDOW, DEFAULT_WINDOW,
                                         DEFAULT_FRAME_SIZE, UNLIMITED_STREAMS, content_length,
                                         setting_error, window_increment)
from sidecar.http.h2_headers import process_outbound_headers, process_received_headers

# A header block may span this many frames (h2's CONTINUATION backlog): a CONTINUATION
# flood ends the connection.
MAX_HEADER_FRAMES: Final = 64
# How the streams no longer open are remembered (for how to answer a late frame on one):
# the last 4096 to 8192 of them.
SENT_END: Final = 1
RECEIVED_END: Final = 2
SENT_RESET: Final = 3
RECEIVED_RESET: Final = 4
REMEMBERED_CLOSED: Final = 4096


class StreamState:
    """One stream's state: which sides have ended it, its windows, its body's length."""

    def __init__(self, stream_id: int, outbound_window: int, inbound_window: int) -> None:
        self.stream_id = stream_id
        self.local_ended = False        # we sent END_STREAM
        self.remote_ended = False       # the peer did
        self.headers_sent = False
        self.headers_received = False
        self.outbound_window = outbound_window
        self.inbound_window = inbound_window
        self.inbound_max = inbound_window
        self.inbound_processed = 0      # consumed and acknowledged, not yet handed back
        self.expected_length = -1       # content-length received (-1: none)
        self.received_length = 0
        self.head_request = False       # client: our request was HEAD (its response has no body)


class H2Connection:
    """One HTTP/2 connection's protocol state (either end), without I/O."""

    def __init__(self, client_side: bool, header_encoding: str | None = None,
                 max_concurrent_streams: int = 0, initial_window_size: int = DEFAULT_WINDOW,
                 connection_window_size: int = DEFAULT_WINDOW,
                 max_header_list_size: int = 2**16, validate_outbound: bool = True,
                 normalize_outbound: bool = True) -> None:
        self.client_side = client_side
        self.header_encoding = header_encoding
        self.validate_outbound = validate_outbound
        self.normalize_outbound = normalize_outbound
        self.out = bytearray()
        self.inbuf = b""
        self.preface_left = b"" if client_side else PREFACE
        self.terminated = False          # our GOAWAY for an error (or close) is queued
        # The stream whose request headers (or trailers) the ProtocolError being raised
        # refused as malformed (RFC 9113 8.1.1), else 0: the connection manager counts and
        # logs that stream (server side only).
        self.malformed_stream = 0
        # A header block still waiting for its CONTINUATION frames.
        self.block_stream = 0
        self.block_flags = 0
        self.block_frames = 0
        self.block = bytearray()
        # Our settings (in force from the start, as h2 treats settings given at creation).
        self.local_max_concurrent_streams = max_concurrent_streams or UNLIMITED_STREAMS
        self.local_initial_window = initial_window_size
        self.connection_window_size = connection_window_size
        self.max_inbound_frame_size = DEFAULT_FRAME_SIZE
        # The peer's settings.
        self.remote_max_concurrent_streams = UNLIMITED_STREAMS
        self.remote_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.remote_max_header_list_size = 0
        # Connection windows: what we may send; what the peer may send us.
        self.outbound_window = DEFAULT_WINDOW
        self.inbound_window = DEFAULT_WINDOW
        self.inbound_max = DEFAULT_WINDOW
        self.inbound_processed = 0
        self.streams: dict[int, StreamState] = {}
        # Stream id -> how it closed (SENT_END...), for the streams closed lately: two
        # generations, the older dropped whole when the newer fills up.
        self.closed: dict[int, int] = {}
        self.closed_before: dict[int, int] = {}
        self.highest_inbound = 0
        self.highest_outbound = 0
        self.encoder = Encoder()
        self.decoder = Decoder(max_header_list_size, plain=True)

    # --- starting, and what goes out ------------------------------------------------------

    def initiate_connection(self) -> None:
        """Queue the client preface (client side), our SETTINGS and the connection window."""
        out = self.out
        if self.client_side:
            out += PREFACE
        settings = [(HEADER_TABLE_SIZE, 4096), (ENABLE_PUSH, 0),
                    (INITIAL_WINDOW_SIZE, self.local_initial_window),
                    (MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE), (ENABLE_CONNECT_PROTOCOL, 0)]
        if self.local_max_concurrent_streams != UNLIMITED_STREAMS:
            settings.append((MAX_CONCURRENT_STREAMS, self.local_max_concurrent_streams))
        payload = bytearray()
        for code, value in settings:
            payload += code.to_bytes(2, "big")
            payload += value.to_bytes(4, "big")
        self._frame(SETTINGS, 0, 0, bytes(payload))
        if self.connection_window_size > DEFAULT_WINDOW:
            increment = self.connection_window_size - DEFAULT_WINDOW
            self.inbound_window += increment
            self.inbound_max = self.inbound_window
            self._window_update(0, increment)

    def data_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        out = self.out
        out += len(payload).to_bytes(3, "big")
        out.append(kind)
        out.append(flags)
        out += stream_id.to_bytes(4, "big")
        out += payload

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))

    def _rst(self, stream_id: int, code: int) -> None:
        self._frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))

    # --- sending ----------------------------------------------------------------------------

    def get_next_available_stream_id(self) -> int:
        if not self.highest_outbound:
            return 1 if self.client_side else 2
        return self.highest_outbound + 2

    def send_headers(self, stream_id: int, headers: list[Any], end_stream: bool = False) -> None:
        """A request's, response's (a 1xx one too) or trailers' header block: fields as
        bytes, or all as str (encoded UTF-8 here)."""
        block = headers
        if headers and type(headers[0][0]) is str:
            block = [(n.encode(), v.encode()) for n, v in headers]
        stream = self.streams.get(stream_id)
        is_trailer = False
        if stream is None:
            if not self.client_side or stream_id <= self.highest_outbound or not stream_id & 1:
                raise StreamClosedError(stream_id)
            if len(self.streams) >= self.remote_max_concurrent_streams:
                raise TooManyStreamsError(
                    f"Max outbound streams is {self.remote_max_concurrent_streams}, "
                    f"{len(self.streams)} open")
            stream = StreamState(stream_id, self.remote_initial_window, self.local_initial_window)
            self.streams[stream_id] = stream
            self.highest_outbound = stream_id
            stream.headers_sent = True
            for name, value in block:
                if name == b":method":
                    stream.head_request = value == b"HEAD"
                    break
        elif stream.local_ended:
            raise StreamClosedError(stream_id)
        elif not self.client_side and block and block[0][0] == b":status" and \
                block[0][1][:1] == b"1":
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            self._header_frames(stream_id, 0, process_outbound_headers(
                block, False, True, self.normalize_outbound, False, self.validate_outbound))
            return
        elif stream.headers_sent:
            if not end_stream:
                raise ProtocolError("Trailers must have END_STREAM set.")
            is_trailer = True
        else:
            stream.headers_sent = True
        block = process_outbound_headers(block, is_trailer, not (self.client_side or is_trailer),
                                         self.normalize_outbound, False, self.validate_outbound)
        self._header_frames(stream_id, END_STREAM if end_stream else 0, block)
        if end_stream:
            self._local_end(stream)

    def _header_frames(self, stream_id: int, flags: int, headers: list[Any]) -> None:
        encoded = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        if len(encoded) <= size:
            self._frame(HEADERS, flags | END_HEADERS, stream_id, encoded)
            return
        self._frame(HEADERS, flags, stream_id, encoded[:size])
        pos = size
        while pos < len(encoded):
            piece = encoded[pos:pos + size]
            pos += size
            self._frame(CONTINUATION, END_HEADERS if pos >= len(encoded) else 0, stream_id, piece)

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False) -> None:
        """A DATA frame; the caller keeps within ``local_flow_control_window`` and
        ``max_outbound_frame_size``."""
        stream = self._sending_on(stream_id)
        size = len(data)
        if size > self.outbound_window or size > stream.outbound_window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is "
                                   f"{min(self.outbound_window, stream.outbound_window)}")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is "
                                     f"{self.max_outbound_frame_size}")
        self.outbound_window -= size
        stream.outbound_window -= size
        out = self.out
        out += size.to_bytes(3, "big")
        out.append(DATA)
        out.append(END_STREAM if end_stream else 0)
        out += stream_id.to_bytes(4, "big")
        out += data
        if end_stream:
            self._local_end(stream)

    def end_stream(self, stream_id: int) -> None:
        stream = self._sending_on(stream_id)
        self._frame(DATA, END_STREAM, stream_id, b"")
        self._local_end(stream)

    def _sending_on(self, stream_id: int) -> StreamState:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise StreamClosedError(stream_id)
        return stream

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id)
        self._rst(stream_id, error_code)
        self._close(stream, SENT_RESET)

    def local_flow_control_window(self, stream_id: int) -> int:
        """How much may be sent on the stream now (its window within the connection's)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id)
        window = stream.outbound_window
        return window if window < self.outbound_window else self.outbound_window

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        """``size`` flow-controlled bytes were consumed: hand the windows back (batched)."""
        increment = window_increment(self.inbound_window, self.inbound_max,
                               self.inbound_processed + size)
        if increment < 0:
            self.inbound_processed += size
        else:
            self.inbound_processed = 0
            if increment:
                self.inbound_window += increment
                self._window_update(0, increment)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_ended:
            return          # nothing more will come on it: its window no longer matters
        processed = stream.inbound_processed + size
        increment = window_increment(stream.inbound_window, stream.inbound_max, processed)
        if increment < 0:
            stream.inbound_processed = processed
        else:
            stream.inbound_processed = 0
            if increment:
                stream.inbound_window += increment
                self._window_update(stream_id, increment)

    def ping(self, data: bytes) -> None:
        self._frame(PING, 0, 0, data)

    def close_connection(self, error_code: int = NO_ERROR, last_stream_id: int = -1) -> None:
        """Queue a GOAWAY that ends the connection: frames received after it are ignored."""
        self.send_goaway(error_code, last_stream_id)
        self.terminated = True

    def send_goaway(self, error_code: int = NO_ERROR, last_stream_id: int = -1) -> None:
        """Queue a GOAWAY (no new streams past ``last_stream_id``), still taking frames for
        the streams in flight (a server draining)."""
        last = self.highest_inbound if last_stream_id < 0 else last_stream_id
        self._frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + int(error_code).to_bytes(4, "big"))

    def _local_end(self, stream: StreamState) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            self._close(stream, SENT_END)

    def _close(self, stream: StreamState, how: int) -> None:
        sid = stream.stream_id
        del self.streams[sid]
        closed = self.closed
        closed[sid] = how
        if len(closed) >= REMEMBERED_CLOSED:
            self.closed_before = closed
            self.closed = {}

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Any]:
        events: list[Any] = []
        if self.terminated:
            return events
        if self.preface_left:
            expected = self.preface_left
            n = min(len(expected), len(data))
            if data[:n] != expected[:n]:
                self.terminated = True      # not HTTP/2 at all: not even a GOAWAY (as h2)
                raise ProtocolError("Invalid HTTP/2 preamble.")
            self.preface_left = expected[n:]
            data = data[n:]
        buf = self.inbuf + data if self.inbuf else data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > self.max_inbound_frame_size:
                    raise FrameTooLargeError(f"Received overlong frame: length {length}, "
                                             f"max {self.max_inbound_frame_size}")
                stop = pos + 9 + length
                if stop > end:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                sid = ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | \
                    (buf[pos + 7] << 8) | buf[pos + 8]
                payload = buf[pos + 9:stop]
                pos = stop
                if self.block_stream:
                    self._continuation(kind, flags, sid, payload, events)
                elif kind == DATA:
                    self._receive_data(flags, sid, payload, events)
                elif kind == HEADERS:
                    self._receive_headers_frame(flags, sid, payload, events)
                elif kind == WINDOW_UPDATE:
                    self._receive_window_update(sid, payload, events)
                elif kind == RST_STREAM:
                    self._receive_rst_stream(sid, payload, events)
                elif kind == SETTINGS:
                    self._receive_settings(flags, sid, payload, events)
                elif kind == PING:
                    self._receive_ping(flags, sid, payload, events)
                elif kind == PRIORITY:
                    if not sid:
                        raise ProtocolError("Received frame with invalid header: "
                                            "PRIORITY frame requires a stream id")
                    if len(payload) != 5:
                        raise FrameDataMissingError("Frame data missing or invalid")
                    self._check_priority(sid, payload)
                    events.append(PriorityUpdated(sid))
                elif kind == GOAWAY:
                    self._receive_goaway(sid, payload, events)
                elif kind == CONTINUATION:
                    raise ProtocolError("Received unexpected CONTINUATION frame")
                elif kind == PUSH_PROMISE:
                    raise ProtocolError("Received pushed stream")
                # Unknown frame types (and ALTSVC) are ignored (RFC 9113 5.5).
        except ProtocolError as e:
            self.inbuf = b""
            self._terminate(e.error_code)
            raise
        self.inbuf = buf[pos:] if pos < end else b""
        return events

    def _terminate(self, error_code: int) -> None:
        if not self.terminated:
            self.close_connection(int(error_code))

    def _strip_padding(self, flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload:
            raise FrameDataMissingError("Frame data missing or invalid")
        pad = payload[0]
        if pad and pad >= len(payload):
            raise ProtocolError("Received frame with invalid padding.")
        return payload[1:len(payload) - pad]

    def _check_priority(self, sid: int, payload: bytes) -> None:
        depends_on = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if depends_on == sid:
            raise ProtocolError(f"Stream {sid} may not depend on itself")

    def _closed_or_idle(self, sid: int) -> bool:
        """For a stream id not open: True when it was used (closed now), False when idle."""
        outbound = (sid & 1) == (1 if self.client_side else 0)
        return sid <= (self.highest_outbound if outbound else self.highest_inbound)

    def _receive_data(self, flags: int, sid: int, payload: bytes, events: list[Any]) -> None:
        if not sid:
            raise ProtocolError("Received frame with invalid header: DATA frame requires a "
                                "stream id")
        length = len(payload)
        data = self._strip_padding(flags, payload)
        self.inbound_window -= length
        if self.inbound_window < 0:
            raise FlowControlError("Flow control window shrunk below 0")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_ended:
            if stream is None and not self._closed_or_idle(sid):
                raise NoSuchStreamError(sid)
            # A late DATA frame on a stream that is over: counted against the connection's
            # window (handed back now, so the connection does not stall), and refused.
            self.acknowledge_received_data(length, sid)
            self._rst(sid, STREAM_CLOSED)
            if stream is not None:
                self._close(stream, SENT_RESET)
                events.append(StreamReset(sid, STREAM_CLOSED, False))
            return
        if not stream.headers_received:
            raise ProtocolError("cannot receive data before headers")
        stream.inbound_window -= length
        if stream.inbound_window < 0:
            raise FlowControlError("Flow control window shrunk below 0")
        ended = bool(flags & END_STREAM)
        expected = stream.expected_length
        stream.received_length += len(data)
        if expected >= 0 and (stream.received_length > expected or
                              (ended and stream.received_length != expected)):
            raise InvalidBodyLengthError(expected, stream.received_length)
        events.append(DataReceived(sid, data, length, ended))
        if ended:
            self._remote_end(stream)

    def _remote_end(self, stream: StreamState) -> None:
        stream.remote_ended = True
        if stream.local_ended:
            self._close(stream, RECEIVED_END)

    def _receive_headers_frame(self, flags: int, sid: int, payload: bytes,
                               events: list[Any]) -> None:
        if not sid:
            raise ProtocolError("Received frame with invalid header: HEADERS frame requires "
                                "a stream id")
        payload = self._strip_padding(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise FrameDataMissingError("Frame data missing or invalid")
            self._check_priority(sid, payload)
            payload = payload[5:]
        if flags & END_HEADERS:
            self._receive_headers(flags, sid, payload, events)
        else:
            self.block_stream = sid
            self.block_flags = flags
            self.block_frames = 1
            self.block = bytearray(payload)

    def _continuation(self, kind: int, flags: int, sid: int, payload: bytes,
                      events: list[Any]) -> None:
        if kind != CONTINUATION or sid != self.block_stream:
            raise ProtocolError("Invalid frame during header block.")
        self.block_frames += 1
        if self.block_frames > MAX_HEADER_FRAMES:
            raise ProtocolError("Too many continuation frames received.")
        self.block += payload
        if flags & END_HEADERS:
            self.block_stream = 0
            block = bytes(self.block)
            self.block = bytearray()
            self._receive_headers(self.block_flags, sid, block, events)

    def _receive_headers(self, flags: int, sid: int, block: bytes, events: list[Any]) -> None:
        """A whole header block: a new stream's request (server), a response, or trailers."""
        stream = self.streams.get(sid)
        if stream is None and not self.client_side and \
                len(self.streams) + 1 > self.local_max_concurrent_streams:
            raise TooManyStreamsError(f"Max inbound streams is "
                                      f"{self.local_max_concurrent_streams}, "
                                      f"{len(self.streams)} open")
        # Decoded first, whatever happens to the stream: the HPACK context is the connection's.
        try:
            headers = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError as e:
            raise DenialOfServiceError(f"Oversized header block: {e}") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"Error decoding header block: {e}") from e
        ended = bool(flags & END_STREAM)
        if stream is None:
            if self.client_side or self._closed_or_idle(sid):
                self._headers_on_closed(sid)
                return
            if not sid & 1:
                raise ProtocolError("Invalid stream ID for peer.")
            stream = StreamState(sid, self.remote_initial_window, self.local_initial_window)
            self.streams[sid] = stream
            self.highest_inbound = sid
        elif stream.remote_ended:
            # HEADERS after the peer ended the stream: a stream error (RFC 9113 5.1).
            self._rst(sid, STREAM_CLOSED)
            self._close(stream, SENT_RESET)
            events.append(StreamReset(sid, STREAM_CLOSED, False))
            return
        client = self.client_side
        if client and headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1":
            # An informational (1xx) response: checked, and passed over.
            if ended:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            process_received_headers(headers, False, True, True, True, None)
            return
        trailers = stream.headers_received
        if trailers and not ended:
            raise ProtocolError("Trailers must have END_STREAM set")
        if not trailers:
            stream.headers_received = True
            stream.expected_length = 0 if stream.head_request else content_length(headers)
        try:
            headers = process_received_headers(headers, trailers, client and not trailers, True,
                                               True, self.header_encoding)
        except ProtocolError:
            if not client:
                self.malformed_stream = sid
            raise
        if trailers:
            events.append(TrailersReceived(sid, headers))
        elif client:
            events.append(ResponseReceived(sid, headers, ended))
        else:
            events.append(RequestReceived(sid, headers, ended))
        if ended:
            self._remote_end(stream)

    def _headers_on_closed(self, sid: int) -> None:
        how = self.closed.get(sid, 0) or self.closed_before.get(sid, 0)
        if how == SENT_RESET or how == RECEIVED_RESET:
            self._rst(sid, STREAM_CLOSED)         # it crossed our reset: a stream error
        elif how:
            raise StreamClosedError(sid)
        elif not self._closed_or_idle(sid):
            raise ProtocolError("Invalid stream ID for peer.")
        else:
            raise StreamIDTooLowError(sid, self.highest_inbound)

    def _receive_window_update(self, sid: int, payload: bytes, events: list[Any]) -> None:
        if len(payload) != 4:
            raise FrameDataMissingError("Frame data missing or invalid")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not increment:
            raise ProtocolError("Received frame with non-compliant data")
        if not sid:
            self.outbound_window += increment
            if self.outbound_window > MAX_WINDOW:
                raise FlowControlError(f"Window increment would overflow the window: "
                                       f"{self.outbound_window}")
            events.append(WindowUpdated(0, increment))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if not self._closed_or_idle(sid):
                raise NoSuchStreamError(sid)
            return
        stream.outbound_window += increment
        if stream.outbound_window > MAX_WINDOW:
            # A stream error: that stream is reset, the connection goes on.
            self._rst(sid, FLOW_CONTROL_ERROR)
            self._close(stream, SENT_RESET)
            events.append(StreamReset(sid, FLOW_CONTROL_ERROR, False))
            return
        events.append(WindowUpdated(sid, increment))

    def _receive_rst_stream(self, sid: int, payload: bytes, events: list[Any]) -> None:
        if not sid:
            raise ProtocolError("Received frame with invalid header: RST_STREAM frame "
                                "requires a stream id")
        if len(payload) != 4:
            raise FrameDataMissingError("Frame data missing or invalid")
        stream = self.streams.get(sid)
        if stream is None:
            return                  # over already (or never opened): nothing to reset
        self._close(stream, RECEIVED_RESET)
        events.append(StreamReset(sid, int.from_bytes(payload, "big"), True))

    def _receive_settings(self, flags: int, sid: int, payload: bytes, events: list[Any]) -> None:
        if sid:
            raise ProtocolError("Received frame with invalid header: SETTINGS frame must be "
                                "on stream 0")
        if flags & ACK:
            if payload:             # (h2's code; RFC 9113 would have FRAME_SIZE_ERROR)
                raise ProtocolError("Received frame with non-compliant data")
            return                  # ours are in force from the start: nothing pending
        if len(payload) % 6:
            raise FrameDataMissingError("Frame data missing or invalid")
        changed: dict[int, int] = {}
        for pos in range(0, len(payload), 6):
            code = (payload[pos] << 8) | payload[pos + 1]
            value = int.from_bytes(payload[pos + 2:pos + 6], "big")
            error = setting_error(code, value, self.client_side)
            if error:
                raise InvalidSettingsValueError(f"Setting {code} has invalid value {value}",
                                                error_code=error)  # type: ignore[arg-type]
            changed[code] = value
        for code, value in changed.items():
            if code == INITIAL_WINDOW_SIZE:
                delta = value - self.remote_initial_window
                self.remote_initial_window = value
                for stream in self.streams.values():
                    stream.outbound_window += delta
                    if stream.outbound_window > MAX_WINDOW:
                        raise FlowControlError("Window increment would overflow the window")
            elif code == MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent_streams = value
            elif code == MAX_FRAME_SIZE:
                self.max_outbound_frame_size = value
            elif code == HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif code == MAX_HEADER_LIST_SIZE:
                self.remote_max_header_list_size = value
        self._frame(SETTINGS, ACK, 0, b"")
        events.append(RemoteSettingsChanged(changed))

    def _receive_ping(self, flags: int, sid: int, payload: bytes, events: list[Any]) -> None:
        if sid:
            raise ProtocolError("Received frame with invalid header: PING frame must be on "
                                "stream 0")
        if len(payload) != 8:
            raise FrameDataMissingError("Frame data missing or invalid")
        if flags & ACK:
            events.append(PingAckReceived(payload))
        else:
            self._frame(PING, ACK, 0, payload)

    def _receive_goaway(self, sid: int, payload: bytes, events: list[Any]) -> None:
        if sid:
            raise ProtocolError("Received frame with invalid header: GOAWAY frame must be on "
                                "stream 0")
        if len(payload) < 8:
            raise FrameDataMissingError("Frame data missing or invalid")
        # The streams already open may still finish (RFC 9113 6.8): nothing closes here.
        events.append(ConnectionTerminated(int.from_bytes(payload[4:8], "big"),
                                           int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                                           payload[8:] or None))

