"""sidecar.codec.http2 (our sans-IO HTTP/2 connection) against h2's H2Connection.

Differential: a ``Pair`` holds our connection and h2's in the same role with the same
settings, feeds both the same bytes (made by an h2 peer of the other role, or built by hand
for malformed input) and compares the normalised events, the frames each queued, and on a
protocol error the exception class, the proxy's reading of its message and the GOAWAY.
Covered: request/response on both ends, bodies over many frames with flow control and
WINDOW_UPDATE batching, trailers both ways, CONTINUATION (and floods), padding, SETTINGS,
PING, GOAWAY, RST_STREAM and late frames, window overflows, content-length, malformed
frames, stream ids and limits, an HPACK bomb, the preface, byte-at-a-time input.  Where
our codec differs from h2 on purpose (codec/http2.py's docstring, the list in
test_documented_differences) the test asserts our behaviour instead of comparing.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import h2.connection
import h2.events as he
import h2.exceptions as hx
import pytest
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import FRAMES

from sidecar.codec import http2 as ours

REQ = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
       (b":path", b"/")]
POST = [(b":method", b"POST")] + REQ[1:3] + [(b":path", b"/up")]
RESP = [(b":status", b"200"), (b"server", b"t")]
TRAILERS = [(b"grpc-status", b"0")]
ERR = {c.name: int(c) for c in ErrorCodes}
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END, ACK, EH, PADDED = ours.END_STREAM, ours.ACK, ours.END_HEADERS, ours.PADDED
# h2 events that ours does not make (documented).
NOT_EMITTED = (he.StreamEnded, he.SettingsAcknowledged, he.PingReceived,
               he.InformationalResponseReceived, he.UnknownFrameReceived)
# What is compared of each event (h2's StreamEnded is folded into ``ended``).
FIELDS = {"RequestReceived": ("stream_id", "headers", "ended"),
          "ResponseReceived": ("stream_id", "headers", "ended"),
          "TrailersReceived": ("stream_id", "headers"),
          "DataReceived": ("stream_id", "data", "flow_controlled_length", "ended"),
          "StreamReset": ("stream_id", "error_code", "remote_reset"),
          "WindowUpdated": ("stream_id", "delta"), "RemoteSettingsChanged": ("changed",),
          "PingAckReceived": ("ping_data",), "PriorityUpdated": ("stream_id",),
          "ConnectionTerminated": ("error_code", "last_stream_id", "additional_data")}


# type: hyperframe's class name without "Frame".
Frame = NamedTuple("Frame", [("type", str), ("flags", int), ("sid", int), ("payload", bytes)])


def frames(data: bytes) -> list[Frame]:
    """Split bytes (a client preface, then frames) into frames."""
    data = data.removeprefix(ours.PREFACE)
    out, pos = [], 0
    while pos < len(data):
        length, kind = int.from_bytes(data[pos:pos + 3], "big"), data[pos + 3]
        out.append(Frame(FRAMES[kind].__name__[:-5], data[pos + 4],
                         int.from_bytes(data[pos + 5:pos + 9], "big"),
                         data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + \
        payload


def block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block that leaves the receiver's HPACK table as it was (so it mixes with
    the peer's own blocks)."""
    return Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in headers])


def u32(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def settings(**values: int) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(
        SettingCodes[k].to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items()))


def field(e: Any, name: str) -> Any:
    if name == "ended":
        return e.ended if hasattr(e, "ended") else e.stream_ended is not None
    if name == "changed":
        changed = getattr(e, "changed", None) or {
            k: v.new_value for k, v in e.changed_settings.items()}
        return {int(k): v for k, v in changed.items()}
    value = getattr(e, name)
    if name == "headers":
        return [tuple(h) for h in value]
    return int(value) if name == "error_code" else value


def normalise(events: list[Any]) -> list[tuple[Any, ...]]:
    """Events of either library as comparable tuples: (kind, *FIELDS[kind])."""
    # h2 also reports a HEADERS frame's priority as an event of its own (we do not).
    folded = {id(getattr(e, "priority_updated", None)) for e in events}
    return [(type(e).__name__, *(field(e, f) for f in FIELDS[type(e).__name__]))
            for e in events if not isinstance(e, NOT_EMITTED) and id(e) not in folded]


def reference(client_side: bool, max_concurrent_streams: int = 0,
              initial_window_size: int = 65535, connection_window_size: int = 65535,
              header_encoding: str | None = None) -> h2.connection.H2Connection:
    """h2's connection set up as the contract says ours is."""
    conn = h2.connection.H2Connection(H2Configuration(client_side=client_side,
                                                      header_encoding=header_encoding))
    initial = {SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size}
    if client_side:
        initial[SettingCodes.ENABLE_PUSH] = 0
    if max_concurrent_streams:
        initial[SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
    conn.local_settings = Settings(client=client_side, initial_values=initial)
    conn.initiate_connection()
    if connection_window_size > 65535:
        conn.increment_flow_control_window(connection_window_size - 65535)
    return conn


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:      # noqa: BLE001 - the class is what is compared
        return type(e)


def classify(text: str) -> str:
    """How the proxy (http/connection_h2.py) reads an error's message."""
    return next((w for w in ("preamble", "continuation", "header", "pseudo")
                 if w in text.lower()), "")


class Pair:
    """Ours and h2's connection in one role, and an h2 peer of the other, past the
    handshake (preface and SETTINGS both ways, acknowledged)."""

    def __init__(self, client_side: bool = False, handshake: bool = True, **kw: Any) -> None:
        self.ours = ours.H2Connection(client_side, **kw)
        self.ours.initiate_connection()
        self.ref = reference(client_side, **kw)
        self.peer = h2.connection.H2Connection(H2Configuration(client_side=not client_side))
        self.peer.initiate_connection()
        self.ended: set[int] = set()    # streams the peer ended (h2 may still open them)
        if handshake:
            self.exchange()

    def sent(self, to_peer: bool = True) -> list[Frame]:
        """What both queued: equal, but for h2's (documented) WINDOW_UPDATEs on streams
        the peer ended; passed on to the peer."""
        data = self.ours.data_to_send()
        theirs = [f for f in frames(self.ref.data_to_send())
                  if not (f.type == "WindowUpdate" and f.sid in self.ended)]
        assert frames(data) == theirs
        if to_peer and data:
            self.peer.receive_data(data)
        return theirs

    def receive(self, data: bytes, bytewise: bool = False) -> list[tuple[Any, ...]]:
        """Both fed ``data`` (ours one byte at a time if ``bytewise``): the same events."""
        pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
        mine = normalise([e for piece in pieces for e in self.ours.receive_data(piece)])
        assert mine == normalise(self.ref.receive_data(data))
        self.ended.update(e[1] for e in mine if e[-1] is True or e[0] == "TrailersReceived")
        return mine

    def from_peer(self, act: Callable[[h2.connection.H2Connection], Any]) -> list[tuple]:
        act(self.peer)
        return self.receive(self.peer.data_to_send())

    def exchange(self) -> None:
        """Pass frames both ways until neither side has any."""
        while [self.sent(), data := self.peer.data_to_send()] != [[], b""]:
            self.receive(data)

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        """A method on both: the same result or the same exception class (ours may raise
        the narrower StreamClosedError where h2 raises NoSuchStreamError/ProtocolError)."""
        mine = outcome(lambda: getattr(self.ours, name)(*args, **kw))
        theirs = outcome(lambda: getattr(self.ref, name)(*args, **kw))
        if mine is hx.StreamClosedError and isinstance(theirs, type):
            assert issubclass(mine, theirs)
        else:
            assert mine == theirs
        return mine

    def fails(self, data: bytes) -> tuple[type, int]:
        """Bad input: both raise the same class and queue the same GOAWAY: its class, code."""
        with pytest.raises(hx.ProtocolError) as theirs:
            self.ref.receive_data(data)
        with pytest.raises(hx.ProtocolError) as mine:
            self.ours.receive_data(data)
        assert type(mine.value) is type(theirs.value)
        assert classify(str(mine.value)) == classify(str(theirs.value))
        out = self.sent(to_peer=False)
        assert out[-1].type == "GoAway"
        return type(mine.value), int.from_bytes(out[-1].payload[4:8], "big")

    def open(self, sid: int = 1, headers: list = POST, end: bool = False) -> None:
        """Stream ``sid`` opened by whichever end is the client (and answered)."""
        if self.ours.client_side:
            self.call("send_headers", sid, headers, end_stream=end)
            self.sent()
            self.from_peer(lambda p: p.send_headers(sid, RESP))
        else:
            self.from_peer(lambda p: p.send_headers(sid, headers, end_stream=end))


# --- the handshake, requests and responses ------------------------------------------------


@pytest.mark.parametrize("client_side", [False, True])
@pytest.mark.parametrize("kw", [{}, {"max_concurrent_streams": 7}, {
    "initial_window_size": 1 << 20, "connection_window_size": 1 << 24}])
def test_handshake(client_side: bool, kw: dict) -> None:
    p = Pair(client_side, **kw)     # compares our SETTINGS (+WINDOW_UPDATE) with h2's
    assert p.ours.remote_max_concurrent_streams == p.ref.remote_settings.max_concurrent_streams


def test_server_request_response() -> None:
    p = Pair()
    ev = p.from_peer(lambda c: c.send_headers(1, REQ + [(b"accept", b"*/*")], end_stream=True))
    assert ev == [("RequestReceived", 1, REQ + [(b"accept", b"*/*")], True)]
    p.call("send_headers", 1, RESP)
    for piece in (b"a" * 16384, b"b" * 16384, b"c" * 10):
        p.call("send_data", 1, piece)
    p.call("end_stream", 1)
    assert [f.type for f in p.sent()] == ["Headers", "Data", "Data", "Data", "Data"]
    assert p.call("send_data", 1, b"late") is hx.StreamClosedError
    assert p.call("send_data", 3, b"never") is hx.StreamClosedError


def test_client_request_response() -> None:
    p = Pair(client_side=True)
    assert p.call("get_next_available_stream_id") == 1
    p.call("send_headers", 1, POST)
    p.call("send_data", 1, b"x" * 1000, end_stream=True)
    p.sent()
    ev = p.from_peer(lambda s: (s.send_headers(1, RESP + [(b"content-length", b"3")]),
                                s.send_data(1, b"abc", end_stream=True)))
    assert ev == [("ResponseReceived", 1, RESP + [(b"content-length", b"3")], False),
                  ("DataReceived", 1, b"abc", 3, True)]
    assert p.call("get_next_available_stream_id") == 3
    # A HEAD's response has no body: content-length is the GET's, not this one's.
    p.call("send_headers", 3, [(b":method", b"HEAD")] + REQ[1:], end_stream=True)
    p.sent()
    assert p.from_peer(lambda s: s.send_headers(3, RESP + [(b"content-length", b"9")],
                                                end_stream=True))[0][-1] is True


@pytest.mark.parametrize("client_side", [False, True])
def test_trailers_both_ways(client_side: bool) -> None:
    """Trailers we send and receive, on a request and on a response."""
    p = Pair(client_side)
    p.open(1)
    if not client_side:
        assert p.from_peer(lambda c: (c.send_data(1, b"req"), c.send_headers(
            1, TRAILERS, end_stream=True)))[-1] == ("TrailersReceived", 1, TRAILERS)
        p.call("send_headers", 1, RESP)
    p.call("send_data", 1, b"body")
    with pytest.raises(hx.ProtocolError):       # (h2's stream state is broken after it)
        p.ours.send_headers(1, TRAILERS)        # no END_STREAM
    assert p.call("send_headers", 1, TRAILERS, end_stream=True) is None
    assert p.sent()[-1].type == "Headers"
    if client_side:
        assert p.from_peer(lambda s: (s.send_data(1, b"resp"), s.send_headers(
            1, TRAILERS, end_stream=True)))[-1] == ("TrailersReceived", 1, TRAILERS)
    p.open(3)
    assert p.fails(frame(HEADERS, EH, 3, block(TRAILERS))) == (hx.ProtocolError,
                                                               ERR["PROTOCOL_ERROR"])


# --- bodies and flow control ------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"initial_window_size": 1000}, {
    "initial_window_size": 1 << 20, "connection_window_size": 1 << 22}])
@pytest.mark.parametrize("batch", [1, 3, 7])
def test_body_flow_control_and_acknowledgement(kw: dict, batch: int) -> None:
    """A 300 KB body through shut windows: ours hands back exactly the WINDOW_UPDATEs h2
    does, however the acknowledgements are batched."""
    p = Pair(**kw)
    p.open(1)
    left, pending = 300_000, []
    while left or pending:
        window = p.peer.local_flow_control_window(1)
        if left and window:
            n = min(window, left, p.peer.max_outbound_frame_size)
            left -= n
            pending += [e[3] for e in p.from_peer(lambda c: c.send_data(
                1, b"z" * n, end_stream=not left))]
        if len(pending) >= batch or not window or not left:
            for size in pending:
                p.call("acknowledge_received_data", size, 1)
            pending = []
            p.exchange()
    assert p.ours.inbound_window == p.ref._inbound_flow_control_window_manager.current_window_size


def test_outbound_window_and_window_updates() -> None:
    p = Pair()
    p.open(1)
    p.open(3)
    p.call("send_headers", 1, RESP)
    while (window := p.call("local_flow_control_window", 1)):
        p.call("send_data", 1, b"o" * min(window, 16384))
    assert p.call("send_data", 1, b"!") is hx.FlowControlError
    assert p.call("send_data", 1, b"") is None
    ev = p.from_peer(lambda c: (c.increment_flow_control_window(100),
                                c.increment_flow_control_window(50, stream_id=1)))
    assert ev == [("WindowUpdated", 0, 100), ("WindowUpdated", 1, 50)]
    assert p.call("local_flow_control_window", 1) == 50
    assert p.call("local_flow_control_window", 9) is hx.StreamClosedError
    p.sent()
    # A stream's window overflowing: that stream is reset, the connection goes on.
    assert p.receive(frame(WINDOW, 0, 1, u32(2**31 - 1))) == [
        ("StreamReset", 1, ERR["FLOW_CONTROL_ERROR"], False)]
    assert p.sent(to_peer=False) == [Frame("RstStream", 0, 1, u32(ERR["FLOW_CONTROL_ERROR"]))]
    assert p.receive(frame(WINDOW, 0, 1, u32(5))) == []            # reset stream: ignored
    assert p.fails(frame(WINDOW, 0, 3, u32(0))) == (hx.ProtocolError, ERR["PROTOCOL_ERROR"])
    assert Pair().fails(frame(WINDOW, 0, 0, u32(2**31 - 1))) == (hx.FlowControlError,
                                                                 ERR["FLOW_CONTROL_ERROR"])


@pytest.mark.parametrize("body", [[b"12345"], [b"123456", b"789012"]])
def test_content_length_mismatch(body: list[bytes]) -> None:
    p = Pair()
    p.open(1, POST + [(b"content-length", b"10")])
    data = b"".join(frame(DATA, END if b is body[-1] else 0, 1, b) for b in body)
    assert p.fails(data) == (hx.InvalidBodyLengthError, ERR["PROTOCOL_ERROR"])


# --- CONTINUATION and padding -----------------------------------------------------------


def test_continuation() -> None:
    p = Pair()
    big = REQ + [(b"x-big", b"v" * 40000)]          # the peer splits it at 16 KiB
    assert p.from_peer(lambda c: c.send_headers(1, big, end_stream=True))[0][2] == big
    hb = block(REQ)
    split = frame(HEADERS, END, 3, hb[:3]) + frame(CONT, 0, 3, hb[3:7]) + \
        frame(CONT, EH, 3, hb[7:])
    assert p.receive(split, bytewise=True) == [("RequestReceived", 3, REQ, True)]
    p.call("send_headers", 3, RESP + [(b"x-big", b"w" * 40000)], end_stream=True)
    assert [f.type for f in p.sent(to_peer=False)] == ["Headers"] + ["Continuation"] * 2
    for interloper in (frame(PING, 0, 0, b"8 bytes!"), frame(CONT, EH, 7, hb[3:]),
                       frame(DATA, 0, 5, b"x")):
        assert Pair().fails(frame(HEADERS, END, 5, hb[:3]) + interloper) == (
            hx.ProtocolError, ERR["PROTOCOL_ERROR"])


@pytest.mark.parametrize("pieces", [63, 64, 65, 200])
def test_continuation_flood(pieces: int) -> None:
    """A header block may span 64 frames (h2's CONTINUATION backlog), not more."""
    hb = block(REQ + [(b"pad", b"p" * 300)])
    cut = [hb[i * len(hb) // pieces:(i + 1) * len(hb) // pieces] for i in range(pieces)]
    data = frame(HEADERS, END, 1, cut[0]) + b"".join(
        frame(CONT, EH if i == pieces - 1 else 0, 1, c) for i, c in enumerate(cut[1:], 1))
    if pieces <= 64:
        assert Pair().receive(data)[0][0] == "RequestReceived"
    else:
        assert Pair().fails(data) == (hx.ProtocolError, ERR["PROTOCOL_ERROR"])


def test_padding() -> None:
    p = Pair()
    hb = block(POST)
    p.receive(frame(HEADERS, EH | PADDED, 1, b"\x03" + hb + b"\0" * 3))
    ev = p.receive(frame(DATA, PADDED, 1, b"\x0a" + b"body" + b"\0" * 10) +
                   frame(DATA, PADDED | END, 1, b"\x00"))
    assert ev == [("DataReceived", 1, b"body", 15, False), ("DataReceived", 1, b"", 1, True)]
    p.call("acknowledge_received_data", 16, 1)
    p.sent()
    # Padding as long as the frame, and PADDED frames with no pad length at all.
    for bad in (frame(DATA, PADDED, 3, b"\x05abcd"), frame(HEADERS, PADDED | EH, 3, b"\x09" +
                hb[:8]), frame(DATA, PADDED, 3), frame(HEADERS, PADDED | EH, 3)):
        q = Pair()
        q.open(3)
        assert q.fails(bad)[1] in (ERR["PROTOCOL_ERROR"], ERR["FRAME_SIZE_ERROR"])


# --- SETTINGS, PING, GOAWAY ---------------------------------------------------------------


@pytest.mark.parametrize("client_side", [False, True])
def test_settings_applied(client_side: bool) -> None:
    p = Pair(client_side)
    p.open(1)
    ev = p.receive(settings(INITIAL_WINDOW_SIZE=100, MAX_FRAME_SIZE=20000,
                            MAX_CONCURRENT_STREAMS=5, HEADER_TABLE_SIZE=100))
    assert ev[0][1][SettingCodes.INITIAL_WINDOW_SIZE] == 100
    assert p.sent() == [Frame("Settings", ACK, 0, b"")]
    assert p.call("local_flow_control_window", 1) == 100
    assert p.ours.remote_max_concurrent_streams == 5
    p.receive(settings(INITIAL_WINDOW_SIZE=70000))
    assert p.call("local_flow_control_window", 1) == 65535      # the connection's window
    p.from_peer(lambda c: c.increment_flow_control_window(50000))
    if not client_side:
        p.call("send_headers", 1, RESP + [(b"x-big", b"w" * 19000)])
    assert p.call("send_data", 1, b"d" * 20000) is None
    assert p.call("send_data", 1, b"d" * 20001) is hx.FrameTooLargeError
    p.sent(to_peer=False)       # (the h2 peer never raised its own frame size)
    p.receive(frame(WINDOW, 0, 1, u32(100000)))     # then a new initial window overflows it
    assert p.fails(settings(INITIAL_WINDOW_SIZE=2**31 - 1)) == (hx.FlowControlError,
                                                                ERR["FLOW_CONTROL_ERROR"])


@pytest.mark.parametrize("client_side", [False, True])
def test_ping_goaway_push(client_side: bool) -> None:
    p = Pair(client_side)
    p.open(1)
    assert p.from_peer(lambda c: c.ping(b"12345678")) == []
    assert p.sent() == [Frame("Ping", ACK, 0, b"12345678")]
    p.call("ping", b"abcdefgh")
    p.sent()
    assert p.receive(p.peer.data_to_send()) == [("PingAckReceived", b"abcdefgh")]
    ev = p.receive(frame(GOAWAY, 0, 0, u32(1, ERR["ENHANCE_YOUR_CALM"]) + b"bye"))
    assert ev == [("ConnectionTerminated", ERR["ENHANCE_YOUR_CALM"], 1, b"bye")]
    if client_side:     # a server may not offer push; a client may
        assert Pair(True).fails(settings(ENABLE_PUSH=1)) == (hx.InvalidSettingsValueError,
                                                             ERR["PROTOCOL_ERROR"])
    else:
        assert Pair().receive(settings(ENABLE_PUSH=1))


# --- resets, late frames, malformed frames, stream ids ------------------------------------


def test_rst_stream_both_ways() -> None:
    p = Pair()
    for sid in (1, 3):
        p.open(sid)
    assert p.from_peer(lambda c: c.reset_stream(1, ERR["CANCEL"])) == [
        ("StreamReset", 1, ERR["CANCEL"], True)]
    assert p.call("send_data", 1, b"x") is hx.StreamClosedError
    # DATA on a stream we reset: RST_STREAM(STREAM_CLOSED), the connection window given back.
    p.call("reset_stream", 3, ERR["REFUSED_STREAM"])
    p.sent()
    out = []
    for _ in range(4):
        assert p.receive(frame(DATA, 0, 3, b"q" * 16000)) == []
        out += p.sent(to_peer=False)
    assert out.count(Frame("RstStream", 0, 3, u32(ERR["STREAM_CLOSED"]))) == 4
    assert Frame("WindowUpdate", 0, 0, u32(48000)) in out      # (h2's batching)
    # HEADERS (trailers) crossing our reset: a stream error too.
    p.receive(frame(HEADERS, EH | END, 3, block(TRAILERS)))
    assert p.sent(to_peer=False) == [Frame("RstStream", 0, 3, u32(ERR["STREAM_CLOSED"]))]
    # DATA after the peer's END_STREAM: the stream is reset, not the connection.
    p.open(5, end=True)
    assert p.receive(frame(DATA, 0, 5, b"late")) == [
        ("StreamReset", 5, ERR["STREAM_CLOSED"], False)]
    p.sent(to_peer=False)
    assert p.receive(frame(RST, 0, 99, u32(0))) == []      # an idle stream: ignored
    assert p.call("reset_stream", 99) is hx.StreamClosedError


@pytest.mark.parametrize("client_side", [False, True])
@pytest.mark.parametrize("bad, code", [
    (settings(ENABLE_PUSH=2), "PROTOCOL_ERROR"),
    (settings(INITIAL_WINDOW_SIZE=2**31), "FLOW_CONTROL_ERROR"),
    (settings(MAX_FRAME_SIZE=16383), "PROTOCOL_ERROR"),
    (settings(MAX_FRAME_SIZE=2**24), "PROTOCOL_ERROR"),
    (settings(ENABLE_CONNECT_PROTOCOL=2), "PROTOCOL_ERROR"),
    (frame(SETTINGS, 0, 0, b"\0\x04\0\0\0"), "FRAME_SIZE_ERROR"),
    (frame(SETTINGS, ACK, 0, b"\0\x04\0\0\0\0"), "PROTOCOL_ERROR"),    # h2's (RFC: FRAME_SIZE)
    (frame(SETTINGS, 0, 1), "PROTOCOL_ERROR"),
    (frame(PING, 0, 0, b"1234567"), "FRAME_SIZE_ERROR"),
    (frame(PING, 0, 1, b"12345678"), "PROTOCOL_ERROR"),
    (frame(GOAWAY, 0, 0, u32(0)), "FRAME_SIZE_ERROR"),
    (frame(GOAWAY, 0, 1, u32(0, 0)), "PROTOCOL_ERROR"),
    (frame(RST, 0, 1, b"\0\0\0"), "FRAME_SIZE_ERROR"),
    (frame(RST, 0, 0, u32(0)), "PROTOCOL_ERROR"),
    (frame(PRIORITY, 0, 1, b"\0\0\0\0"), "FRAME_SIZE_ERROR"),
    (frame(PRIORITY, 0, 1, u32(1) + b"\x10"), "PROTOCOL_ERROR"),
    (frame(PRIORITY, 0, 0, u32(1) + b"\x10"), "PROTOCOL_ERROR"),
    (frame(WINDOW, 0, 1, b"\0\0\x01"), "FRAME_SIZE_ERROR"),
    (frame(DATA, 0, 0, b"x"), "PROTOCOL_ERROR"),
    (frame(HEADERS, EH, 0, block(REQ)), "PROTOCOL_ERROR"),
    (frame(DATA, 0, 9, b"x"), "PROTOCOL_ERROR"),
    (frame(HEADERS, EH, 3, block([(b":method", b"GET")])), "PROTOCOL_ERROR"),
    (frame(HEADERS, EH, 3, b"\xff\xff\xff\xff"), "PROTOCOL_ERROR"),      # h2's code
], ids=["set-push", "set-window", "set-frame-small", "set-frame-big", "set-connect",
        "set-length", "set-ack-payload", "set-stream", "ping-length", "ping-stream",
        "goaway-length", "goaway-stream", "rst-length", "rst-0", "priority-length",
        "priority-self", "priority-0", "window-length", "data-0", "headers-0", "data-idle",
        "pseudo", "hpack"])
def test_malformed_frames(client_side: bool, bad: bytes, code: str) -> None:
    p = Pair(client_side)
    p.open(1)
    assert p.fails(bad)[1] == ERR[code]


def test_stream_ids_and_limits() -> None:
    p = Pair()
    p.open(5)
    assert p.fails(frame(HEADERS, EH, 3, block(REQ))) == (hx.StreamIDTooLowError,
                                                          ERR["PROTOCOL_ERROR"])
    assert Pair().fails(frame(HEADERS, EH, 2, block(REQ)))[1] == ERR["PROTOCOL_ERROR"]
    # A server's HEADERS opening an even stream: h2 (client) makes it a RequestReceived;
    # ours, as RFC 9113 5.1.1, a PROTOCOL_ERROR.
    c = Pair(True)
    with pytest.raises(hx.ProtocolError, match="Invalid stream ID"):
        c.ours.receive_data(frame(HEADERS, EH, 2, block(REQ)))
    q = Pair(max_concurrent_streams=2)
    for sid in (1, 3):
        q.open(sid)
    assert q.fails(frame(HEADERS, EH, 5, block(REQ))) == (hx.TooManyStreamsError,
                                                          ERR["PROTOCOL_ERROR"])
    c = Pair(True)
    c.receive(settings(MAX_CONCURRENT_STREAMS=1))
    c.sent()
    c.call("send_headers", 1, REQ, end_stream=True)
    assert c.call("send_headers", 3, REQ) is hx.TooManyStreamsError
    assert c.call("send_headers", 1, REQ) is hx.StreamClosedError


def test_hpack_bomb() -> None:
    """A 4 KB field put in the table, then referenced 20 times (a byte each): 80 KB."""
    p = Pair()
    enc = Encoder()
    p.receive(frame(HEADERS, EH | END, 1, enc.encode(REQ + [(b"bomb", b"b" * 4000)])))
    bomb = enc.encode(REQ + [(b"bomb", b"b" * 4000)] * 20)
    assert len(bomb) < 100
    assert p.fails(frame(HEADERS, EH, 3, bomb)) == (hx.DenialOfServiceError,
                                                    ERR["ENHANCE_YOUR_CALM"])


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ours.PREFACE[:10] + b"X"],
                         ids=["http1", "corrupt"])
def test_bad_preface(data: bytes) -> None:
    """Not HTTP/2: the same error ("preamble": the proxy looks for it), nothing queued."""
    p = Pair(handshake=False)
    p.sent(to_peer=False)
    with pytest.raises(hx.ProtocolError, match="preamble"):
        p.ref.receive_data(data)
    with pytest.raises(hx.ProtocolError, match="preamble"):
        p.ours.receive_data(data)
    p.sent(to_peer=False)


# --- byte boundaries, and the documented differences ---------------------------------------


def conversation() -> bytes:
    c = h2.connection.H2Connection(H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, POST + [(b"x-long", b"l" * 20000)])
    c.send_data(1, b"d" * 16384)
    c.send_data(1, b"e" * 300, pad_length=40)
    c.ping(b"pingpong")
    c.increment_flow_control_window(1000)
    c.send_headers(3, REQ, end_stream=True, priority_weight=5)
    c.prioritize(7, weight=9)
    c.send_headers(1, TRAILERS, end_stream=True)
    c.reset_stream(3, ERR["CANCEL"])
    return c.data_to_send()


@pytest.mark.parametrize("bytewise", [False, True])
def test_every_byte_boundary(bytewise: bool) -> None:
    p = Pair(handshake=False)
    p.sent()
    assert [e[0] for e in p.receive(conversation(), bytewise=bytewise)] == [
        "RemoteSettingsChanged", "RequestReceived", "DataReceived", "DataReceived",
        "WindowUpdated", "RequestReceived", "PriorityUpdated", "TrailersReceived",
        "StreamReset"]
    p.sent(to_peer=False)


@pytest.mark.parametrize("client_side", [False, True])
def test_documented_differences(client_side: bool) -> None:
    # An oversize frame is refused at its 9-byte header (h2 waits for the whole frame).
    p = Pair(client_side)
    header = (16385).to_bytes(3, "big") + frame(DATA, 0, 1)[3:]
    assert p.ref.receive_data(header) == []
    with pytest.raises(hx.FrameTooLargeError):
        p.ours.receive_data(header)
    assert frames(p.ours.data_to_send())[-1].payload[4:] == u32(ERR["FRAME_SIZE_ERROR"])
    assert Pair(client_side).fails(header + b"x" * 16385) == (hx.FrameTooLargeError,
                                                              ERR["FRAME_SIZE_ERROR"])
    # Unexpected CONTINUATION and any PUSH_PROMISE: connection PROTOCOL_ERRORs.
    for bad in (frame(CONT, EH, 1, block(REQ)), frame(PUSH, EH, 1, u32(2) + block(REQ))):
        p = Pair(client_side)
        p.open(1)
        with pytest.raises(hx.ProtocolError):
            p.ours.receive_data(bad)
        assert frames(p.ours.data_to_send())[-1] == Frame(
            "GoAway", 0, 0, u32(0 if client_side else 1, ERR["PROTOCOL_ERROR"]))
    # The peer's GOAWAY: what is queued stays queued (h2 drops it) and open streams go on.
    p = Pair(client_side)
    p.open(1)
    p.ours.receive_data(frame(PING, 0, 0, b"pingpong") + frame(GOAWAY, 0, 0, u32(1, 0)))
    if not client_side:
        p.ours.send_headers(1, RESP)
    p.ours.send_data(1, b"still", end_stream=True)
    out = frames(p.ours.data_to_send())
    assert out[0] == Frame("Ping", ACK, 0, b"pingpong")
    assert out[-1] == Frame("Data", END, 1, b"still")
