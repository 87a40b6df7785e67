"""HTTP/1.1 request and response parsing over h11: the pure-Python reference adapter.

Slow (h11 is pure Python) but independent of llhttp, so the table tests can hold
the httptools adapter against it.  h11 is laxer than llhttp and Envoy where it
cannot be told otherwise (bare LF line ends, obsolete line folding, control
characters in values, any method token), so this adapter finds each head itself,
checks its lines the way llhttp does, applies the shared policy of
``sidecar.codec.http1`` before h11 can answer differently, and hands h11 one head
at a time, with a fresh h11 connection per message.  It is not for production.
"""

from __future__ import annotations

import re
from typing import Any

import h11

from sidecar.codec.events import (Body, EndOfMessage, Event, Headers, ParseError, RequestHead,
                                  ResponseHead)
from sidecar.codec.http1 import (
    CODEC_ERROR, HEADERS_TOO_LARGE, INVALID_CHARACTERS, LOW_VERSION, MAX_CONTENT_LENGTH,
    METHODS, MISSING_HOST, TOO_MANY_HEADERS, bad_response, check_target, connection_tokens,
    head_size, keep_alive, request_framing, response_framing)

_OPEN, _IGNORE, _DEAD = 0, 1, 2
_METHODS_B = [m.encode() for m in METHODS]
# A control character in a field value: llhttp and Envoy 1.40 reject NUL, \x01-\x08,
# \x0b-\x1f and DEL (400 http1.invalid_characters); h11 lets all but NUL through.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_FRAMING = (b"content-length", b"transfer-encoding", b"host", b"expect")


class _Parser:
    """Head framing and the line rules shared by both directions."""

    _response = False

    def __init__(self, max_header_bytes: int, max_headers: int) -> None:
        self._max_bytes = max_header_bytes
        self._max_headers = max_headers
        self._buf = bytearray()
        self._pos = 0                 # start of the first unchecked line of the head
        self._framing: Headers = []   # framing fields as read from the raw lines
        self._start = b""             # the start line, spaces normalized
        self._conn: h11.Connection | None = None    # set while a body is being read
        self._state = _OPEN
        self._error: ParseError | None = None
        self._tunnel = b""            # bytes after the head that switched protocols

    def take_tunnel_bytes(self) -> bytes:
        """The bytes that followed an Upgrade request's (or a 101 response's) head in the
        read that completed it: the first bytes of the tunnel, not HTTP/1.  Once."""
        data, self._tunnel = self._tunnel, b""
        return data

    def _fail(self, status: int = 400, details: str = CODEC_ERROR) -> ParseError:
        error = bad_response() if self._response else ParseError(status, details)
        self._state = _DEAD
        self._error = error
        return error

    def _take_head(self) -> bytes | None:
        """The next complete head (start line through the blank line), or None for more data."""
        buf = self._buf
        if self._pos == 0 and not self._start:
            # RFC 9112 2.2: empty lines before a message are ignored (llhttp, Envoy: any number).
            skip = len(buf) - len(buf.lstrip(b"\r\n"))
            if skip:
                del buf[:skip]
        while True:
            lf = buf.find(b"\n", self._pos)
            if lf < 0:
                if not self._start:
                    self._check_start_prefix(bytes(buf[:16]))
                if buf.find(b"\r", self._pos, len(buf) - 1) >= 0:
                    raise self._fail()                # bare CR (llhttp: at once)
                if len(buf) > self._max_bytes:        # Envoy: raw head > limit -> 431
                    raise self._fail(431, HEADERS_TOO_LARGE)
                return None
            line = bytes(buf[self._pos:lf])
            # RFC 9112 2.2 lets a recipient accept a bare LF (Envoy does); llhttp
            # cannot, so neither adapter does.  A bare CR is invalid (Envoy drops it).
            if line[-1:] != b"\r" or b"\r" in line[:-1]:
                raise self._fail()
            line = line[:-1]
            self._pos = lf + 1
            if self._pos > self._max_bytes:
                raise self._fail(431, HEADERS_TOO_LARGE)
            if not self._start:
                self._start_line(line)
            elif not line:
                head = self._start + b"\r\n" + bytes(buf[buf.index(b"\n") + 1:lf + 1])
                del buf[:lf + 1]
                self._pos = 0
                return head
            else:
                self._field_line(line)

    def _check_start_prefix(self, partial: bytes) -> None:
        # llhttp rejects a bad method or protocol name at its first byte, before any
        # line end arrives (TLS or garbage on a plaintext port never sends one).
        if self._response:
            if not (b"HTTP/".startswith(partial[:5])):
                raise self._fail()
            return
        token, space, _ = partial.partition(b" ")
        if space and token not in _METHODS_B:
            raise self._fail()
        if not space and not any(m.startswith(token) for m in _METHODS_B):
            raise self._fail()

    def _start_line(self, line: bytes) -> None:
        if self._response:
            self._start = line
            return
        # llhttp (and Envoy) take several spaces between the request-line parts, not
        # a leading or trailing one, nor tabs; h11 wants exactly one: normalize.
        parts = [p for p in line.split(b" ") if p]
        if line[:1] == b" " or line[-1:] == b" " or not parts or parts[0] not in _METHODS_B:
            raise self._fail()
        if len(parts) == 2:
            raise self._fail(426, LOW_VERSION)       # HTTP/0.9: Envoy answers 426
        if len(parts) != 3:
            raise self._fail()
        if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") and _VERSION.fullmatch(parts[2]):
            raise self._fail(426, LOW_VERSION)       # HTTP/1.2, HTTP/2.0: Envoy 426
        self._start = b" ".join(parts)

    def _field_line(self, line: bytes) -> None:
        if line[0] in b" \t":
            # Obsolete line folding (RFC 9112 5.2 allows rejecting it; llhttp must, h11
            # would unfold it); also whitespace before the first field line.
            raise self._fail()
        name, colon, value = line.partition(b":")
        if _CTL.search(value):
            raise self._fail(400, INVALID_CHARACTERS)
        if colon and name.lower() in _FRAMING:
            self._framing.append((name.lower().decode("latin-1"),
                                  value.strip(b" \t").decode("latin-1")))

    @staticmethod
    def _fields(raw: list[tuple[bytes, bytes]]) -> tuple[Headers, list[str], list[str]]:
        names = [n.decode("latin-1").lower() for n, _ in raw]
        values = [v.decode("latin-1") for _, v in raw]
        return list(zip(names, values)), names, values

    def _body_events(self, events: list[Event]) -> bool:
        """Pull body events from h11 into events; True once the message has ended."""
        conn = self._conn
        assert conn is not None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._fail(431 if exc.error_status_hint == 431 else 400,
                                 HEADERS_TOO_LARGE if exc.error_status_hint == 431
                                 else CODEC_ERROR) from None
            # h11 takes chunk sizes of up to 20 hex digits; llhttp and Envoy stop at
            # uint64 (17 digits of value -> 400).  h11 keeps the rest of the chunk in
            # its private reader; the reference adapter may look.
            left = getattr(getattr(conn, "_reader", None), "_bytes_in_chunk", 0)
            if type(event) is h11.Data and event.chunk_start:
                left += len(event.data)
            if left > MAX_CONTENT_LENGTH:
                raise self._fail()      # before its data: llhttp stops at the size line
            if type(event) is h11.Data:
                events.append(Body(bytes(event.data)))
            if type(event) is h11.EndOfMessage:
                trailers = None
                if event.headers:
                    raw = list(event.headers.raw_items())
                    if any(_CTL.search(v) for _, v in raw):
                        raise self._fail(400, INVALID_CHARACTERS)
                    trailers, names, values = self._fields(raw)
                    if head_size(-2, names, values) > self._max_bytes:
                        raise self._fail(431, HEADERS_TOO_LARGE)
                events.append(EndOfMessage(trailers))
                return True
            if event is h11.NEED_DATA or event is h11.PAUSED:
                self._check_chunk_line(conn)
                return False

    def _check_chunk_line(self, conn: h11.Connection) -> None:
        # h11 waits for a CRLF to end a chunk-size line; llhttp (and Envoy 1.40) reject
        # a bare LF or CR in it at once.  While h11 waits for such a line, whatever it
        # holds is that line.
        reader: Any = getattr(conn, "_reader", None)
        if (getattr(reader, "_bytes_in_chunk", 1) == 0 and not reader._bytes_to_discard
                and not reader._reading_trailer):
            pending = conn.trailing_data[0]
            if b"\n" in pending or b"\r" in pending[:-1]:
                raise self._fail()

    def _raw_te(self, headers: Headers, values: list[str]) -> None:
        # h11 lower-cases Transfer-Encoding values; events carry values as received.
        raw = iter([v for n, v in self._framing if n == "transfer-encoding"])
        for i, (name, _) in enumerate(headers):
            if name == "transfer-encoding":
                values[i] = next(raw)
                headers[i] = (name, values[i])

    def _pump(self, events: list[Event]) -> list[Event]:
        """Parse what is buffered into events: a head at a time ourselves, then h11 for
        the body.  (The caller's list: on a ParseError it holds what parsed before.)"""
        while self._open():
            if self._conn is None:
                head = self._take_head()
                if head is None:
                    break
                self._begin(head, events)
            elif self._buf:
                self._conn.receive_data(bytes(self._buf))
                self._buf.clear()
                if not self._body_events(events):
                    break
                self._message_done()
            else:
                break
        return events

    def _open(self) -> bool:
        return self._state == _OPEN

    def _begin(self, head: bytes, events: list[Event]) -> None:
        raise NotImplementedError

    def _message_done(self) -> None:
        raise NotImplementedError

    def _reset_head(self) -> None:
        self._framing = []
        self._start = b""


class RequestParser(_Parser):
    """Server side: bytes from a downstream client -> RequestHead, Body*, EndOfMessage;
    a ParseError carries the events its feed() parsed before it."""

    def __init__(self, max_header_bytes: int = 60 * 1024, max_headers: int = 100) -> None:
        super().__init__(max_header_bytes, max_headers)
        self._alive = True

    def feed(self, data: bytes) -> list[Event]:
        if self._state != _OPEN:
            if self._state == _IGNORE:
                return []
            raise self._error  # type: ignore[misc]
        self._buf += data
        events: list[Event] = []
        try:
            return self._pump(events)
        except ParseError as exc:
            if events:
                raise exc.with_events(events) from None   # as the httptools adapter
            raise

    def _begin(self, head: bytes, events: list[Event]) -> None:
        method_b, target_b, version_b = self._start.split(b" ")
        method, target = method_b.decode("ascii"), target_b.decode("latin-1")
        version = version_b[5:].decode("ascii")
        if target[:1] != "/" or method == "CONNECT":
            try:
                check_target(method, target)
            except ParseError as exc:
                raise self._fail(exc.status, exc.details) from None
        try:
            # Before h11 sees them: h11 would answer CL + TE by ignoring CL and
            # "gzip, chunked" with 501 where Envoy says 400 (http1.request_framing).
            length, chunked, expect = request_framing(self._framing, version == "1.1")
        except ParseError as exc:
            error = self._fail(exc.status, exc.details)
            if exc.details == MISSING_HOST:
                # h11 refuses a head without Host: read its fields here, for the access
                # log the connection manager writes (as the httptools adapter's).
                fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if line]
                error.head = RequestHead(method, target, version,
                                         [(n.decode("latin-1").strip().lower(),
                                           v.decode("latin-1").strip(" \t")) for n, v in fields],
                                         False, False, None, False, False)
            raise error from None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_bytes)
        conn.receive_data(head)
        try:
            request = conn.next_event()
        except h11.RemoteProtocolError:
            raise self._fail() from None
        assert type(request) is h11.Request
        headers, names, values = self._fields(list(request.headers.raw_items()))
        self._raw_te(headers, values)
        self._reset_head()
        if len(headers) > self._max_headers:
            raise self._fail(431, TOO_MANY_HEADERS)
        if head_size(len(method) + len(target) + 10, names, values) > self._max_bytes:
            raise self._fail(431, HEADERS_TOO_LARGE)
        alive = keep_alive(version, headers)
        upgrade = "upgrade" in connection_tokens(headers) and "upgrade" in names
        events.append(RequestHead(method, target, version, headers, alive, chunked, length,
                                  upgrade, expect))
        self._alive = alive
        if upgrade or method == "CONNECT":
            # The rest of the connection is not HTTP/1 (the connection manager answers
            # and closes); the head ends the message only when it announced no body.
            if not (chunked or length):
                events.append(EndOfMessage())
                if upgrade and method != "CONNECT":
                    self._tunnel = bytes(self._buf)
            self._buf.clear()
            self._state = _IGNORE
            return
        self._conn = conn
        if self._buf:               # receive_data(b"") would mean end of stream to h11
            conn.receive_data(bytes(self._buf))
            self._buf.clear()
        if self._body_events(events):
            self._message_done()

    def _message_done(self) -> None:
        assert self._conn is not None
        leftover = self._conn.trailing_data[0]
        self._conn = None
        if not self._alive:
            self._state = _IGNORE     # Connection: close: later bytes are not read (Envoy)
            return
        self._buf = bytearray(leftover)


class ResponseParser(_Parser):
    """Client side: bytes from an upstream server -> ResponseHead, Body*, EndOfMessage."""

    _response = True

    # Envoy 1.40's upstream codec takes a response head up to 80 KiB (measured).
    def __init__(self, max_header_bytes: int = 80 * 1024, max_headers: int = 100) -> None:
        super().__init__(max_header_bytes, max_headers)
        self._method: str | None = None
        self._done = False
        self._head: ResponseHead | None = None

    def expect(self, method: str) -> None:
        if self._state == _DEAD:
            raise self._error  # type: ignore[misc]
        self._method = method
        self._done = False
        self._head = None
        self._buf.clear()
        self._pos = 0
        self._reset_head()
        self._conn = None

    def feed(self, data: bytes) -> list[Event]:
        if self._state != _OPEN or self._done or self._method is None:
            if self._state == _IGNORE or not data:
                return []
            raise self._error or self._fail()   # bytes with no request outstanding
        self._buf += data
        return self._pump([])

    def feed_eof(self) -> list[Event]:
        if self._state == _IGNORE or self._done:
            return []
        if self._state == _DEAD:
            raise self._error  # type: ignore[misc]
        if self._conn is None:
            if not self._buf.strip(b"\r\n"):
                return []           # nothing of a (final) response arrived
            raise self._fail()
        events: list[Event] = []
        self._conn.receive_data(b"")
        if not self._body_events(events):
            raise self._fail()
        self._done = True
        return events               # RFC 9112 6.3 rule 8: a close-delimited body ends here

    def _begin(self, head: bytes, events: list[Event]) -> None:
        method = self._method
        assert method is not None
        # The status decides what h11 must be told and which framing is allowed.
        status_b = self._start.partition(b" ")[2][:3]
        status = int(status_b) if status_b.isdigit() else 0
        try:
            response_framing(self._framing, status)
        except ParseError:
            raise self._fail() from None
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_bytes)
        fake = [("host", "upstream")]
        if status == 101:           # h11 takes a 101 only after an upgrade proposal
            fake += [("connection", "upgrade"), ("upgrade", "h2c")]
        conn.send(h11.Request(method=method, target="/", headers=fake))
        conn.send(h11.EndOfMessage())
        conn.receive_data(head + bytes(self._buf))
        self._buf.clear()
        try:
            response = conn.next_event()
        except h11.RemoteProtocolError:
            raise self._fail() from None
        assert isinstance(response, (h11.Response, h11.InformationalResponse))
        status = response.status_code
        version = response.http_version.decode("ascii")
        if version not in ("1.1", "1.0"):
            raise self._fail()
        headers, names, values = self._fields(list(response.headers.raw_items()))
        self._raw_te(headers, values)
        self._reset_head()
        reason = response.reason.decode("latin-1")
        if (len(headers) > self._max_headers
                or head_size(len(reason) + 13, names, values) > self._max_bytes):
            raise self._fail()
        length, chunked = response_framing(headers, status)   # checked on the raw lines
        interim = status < 200 and status != 101
        stop = status == 101 or method == "HEAD" or (method == "CONNECT" and not interim
                                                     and status < 300)
        alive = keep_alive(version, headers)
        if not (stop or interim or status in (204, 304)) and length is None and not chunked:
            alive = False           # close-delimited body (RFC 9112 6.3 rule 8)
        response_head = ResponseHead(status, reason, version, headers, alive, chunked, length)
        events.append(response_head)
        if interim:
            events.append(EndOfMessage())
            self._buf = bytearray(conn.trailing_data[0])   # the next head follows
            return
        self._head = response_head
        if stop:
            events.append(EndOfMessage())
            if status == 101 or method == "CONNECT":
                self._state = _IGNORE          # the connection is now a tunnel
                if status == 101:
                    self._tunnel = conn.trailing_data[0]
                return
            self._finish(conn.trailing_data[0])
            return
        self._conn = conn
        if self._body_events(events):
            self._finish(conn.trailing_data[0])

    def _open(self) -> bool:
        return self._state == _OPEN and not self._done

    def _message_done(self) -> None:
        self._finish(self._conn.trailing_data[0])  # type: ignore[union-attr]

    def _finish(self, leftover: bytes) -> None:
        self._done = True
        self._conn = None
        if leftover.strip(b"\r\n") and self._head is not None:
            # Bytes after the final response (upstreams are never pipelined): deliver
            # it, but the connection must not be reused (Envoy closes it).
            self._head.keep_alive = False
