"""A small blocking HTTP/2 (h2c, prior knowledge) client over the h2 library, for tests.

It speaks through a plain socket so tests can also misbehave: send raw frames,
stop reading, reset streams.  ``events()`` reads what the server sent.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class StreamResult:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None          # the RST_STREAM error code, when reset

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _KeepOpen(h2.connection.H2ConnectionStateMachine):
    """A server's GOAWAY leaves the streams it will still answer (RFC 9113 6.8): keep reading them."""

    def process_input(self, input_: Any) -> Any:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY:
            return []
        return super().process_input(input_)


class H2Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 settings: dict[int, int] | None = None, preamble: bool = True,
                 validate: bool = True) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                           validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate,
                                           validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.state_machine = _KeepOpen()
        self.streams: dict[int, StreamResult] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.auto_ack = True         # acknowledge received data (re-open our windows)
        if preamble:
            self.conn.initiate_connection()
            if settings:
                self.conn.update_settings(settings)
            self.flush()

    # --- sending ----------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, path: str = "/", method: str = "GET", authority: str = "example.com",
                headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                end: bool = True) -> int:
        """Start a request; with ``end`` the body (if any) is sent whole and the stream ended."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", authority)] + list(headers or [])
        self.streams[sid] = StreamResult()
        self.conn.send_headers(sid, hdrs, end_stream=end and not body)
        self.flush()
        if body and end:
            self.send_body(sid, body, end=True)
        return sid

    def send_body(self, sid: int, data: bytes, end: bool = False, deadline: float = 10.0) -> None:
        """Send data on a stream, waiting for window as needed."""
        limit = time.monotonic() + deadline
        while data:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > limit:
                    raise TimeoutError("no flow-control window")
                self.read_some()
                continue
            piece, data = data[:window], data[window:]
            self.conn.send_data(sid, piece)
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    # --- receiving -----------------------------------------------------------------

    def read_some(self, size: int = 1 << 20) -> list[Any]:
        """One recv; process the events; [] and ``closed`` at EOF."""
        try:
            data = self.sock.recv(size)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for ev in events:
            self._event(ev)
        try:
            self.flush()
        except OSError:
            pass
        return events

    def _event(self, ev: Any) -> None:
        sid = getattr(ev, "stream_id", 0)
        st = self.streams.setdefault(sid, StreamResult()) if sid else None
        if isinstance(ev, h2.events.ResponseReceived):
            st.headers = list(ev.headers)
            st.status = int(dict(ev.headers)[":status"])
        elif isinstance(ev, h2.events.DataReceived):
            st.body += ev.data
            if self.auto_ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.TrailersReceived):
            st.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            st.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def wait(self, sid: int, timeout: float = 5.0) -> StreamResult:
        """Read until the stream ended or was reset (or the connection closed)."""
        limit = time.monotonic() + timeout
        st = self.streams[sid]
        while not (st.ended or st.reset is not None or self.closed):
            if time.monotonic() > limit:
                raise TimeoutError(f"stream {sid} not done")
            self.read_some()
        return st

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Read (and discard) until the server closes the connection."""
        limit = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() > limit:
                raise TimeoutError("connection not closed")
            try:
                self.read_some()
            except h2.exceptions.ProtocolError:
                # The server's frames after GOAWAY may upset our state machine: keep reading.
                try:
                    if not self.sock.recv(65536):
                        self.closed = True
                except OSError:
                    self.closed = True

    def get(self, path: str = "/", **kw: Any) -> StreamResult:
        return self.wait(self.request(path, **kw))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One raw HTTP/2 frame (RFC 9113 4.1)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4


class RawClient:
    """Frames by hand, read back without a state machine: for tests that break the protocol."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 preface: bool = True) -> None:
        import hpack
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.closed = False
        if preface:
            self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data: bytes) -> bool:
        """False when the server has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def headers_block(self, path: str = "/", method: str = "GET",
                      extra: list[tuple[str, str]] | None = None) -> bytes:
        return self.encoder.encode([(":method", method), (":path", path), (":scheme", "http"),
                                    (":authority", "example.com")] + list(extra or []))

    def request(self, sid: int, path: str = "/", method: str = "GET", end: bool = True,
                extra: list[tuple[str, str]] | None = None) -> bool:
        flags = END_HEADERS | (END_STREAM if end else 0)
        return self.send(frame(HEADERS, flags, sid, self.headers_block(path, method, extra)))

    def read(self, timeout: float = 5.0, until_closed: bool = True) -> list[tuple[int, int, int, bytes]]:
        """Read frames until the server closes (or, without ``until_closed``, for ``timeout``)."""
        limit = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while not self.closed and time.monotonic() < limit:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self.buffer += data
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                kind, flags = self.buffer[3], self.buffer[4]
                sid = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                self.frames.append((kind, flags, sid, self.buffer[9:9 + length]))
                self.buffer = self.buffer[9 + length:]
        if until_closed and not self.closed:
            raise TimeoutError("connection not closed")
        return self.frames

    def goaway(self) -> tuple[int, int, bytes] | None:
        """(last stream id, error code, debug data) of the server's GOAWAY, if it sent one."""
        for kind, _, _, payload in self.frames:
            if kind == GOAWAY:
                return (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                        int.from_bytes(payload[4:8], "big"), payload[8:])
        return None

    def resets(self) -> dict[int, int]:
        """RST_STREAM error codes by stream."""
        return {sid: int.from_bytes(p[:4], "big") for kind, _, sid, p in self.frames
                if kind == RST_STREAM}

    def statuses(self) -> dict[int, int]:
        out = {}
        for kind, flags, sid, payload in self.frames:
            if kind == HEADERS:
                block = payload
                if flags & 0x8:          # PADDED
                    block = block[1:len(block) - payload[0]]
                if flags & 0x20:         # PRIORITY
                    block = block[5:]
                headers = dict(self.decoder.decode(block))
                if ":status" in headers:
                    out[sid] = int(headers[":status"])
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
