"""HTTP/1.1 request and response parsing over httptools (llhttp): the hot path.

llhttp does the byte work in C and calls back once per URL piece, header, body
piece and message end; the callbacks only append, and everything Python has to
decide about a head is decided once, in on_headers_complete.  Where llhttp and
Envoy 1.40 disagree, the explicit checks below (and the shared policy in
``sidecar.codec.http1``) make this adapter answer like Envoy, and like the h11
reference adapter, which tests/codec/test_http1_table.py holds it against.
"""

from __future__ import annotations

import httptools

from sidecar.codec.events import (Body, EndOfMessage, Event, Headers, ParseError, RequestHead,
                                  ResponseHead)
from sidecar.codec.http1 import (
    CODEC_ERROR, CONTENT_LENGTH_AND_CHUNKED, HEADERS_TOO_LARGE, INVALID_CHARACTERS,
    INVALID_TRANSFER_ENCODING, LOW_VERSION, METHODS, MISSING_HOST, TOO_MANY_HEADERS,
    bad_response, check_target, connection_tokens, keep_alive, request_framing, response_framing)

_HttpParserError = httptools.HttpParserError
_HttpParserUpgrade = httptools.HttpParserUpgrade

# Parser states.  IGNORE: the connection stops being HTTP/1 we parse (upgrade,
# CONNECT, Connection: close); later bytes are dropped, the connection manager
# answers and closes.  DEAD: a ParseError was raised; it is raised again.
_OPEN, _IGNORE, _DEAD = 0, 1, 2


class _Stop(Exception):
    """Raised from a callback to make llhttp stop where it is."""


def _request_error(exc: Exception) -> ParseError:
    # llhttp's error reasons (the llhttp 9 bundled with httptools 0.9) -> Envoy's answers.
    msg = str(exc)
    if "Transfer-Encoding" in msg:
        if "Content-Length" in msg:
            return ParseError(400, CONTENT_LENGTH_AND_CHUNKED)
        return ParseError(501, INVALID_TRANSFER_ENCODING)
    if msg == "Invalid HTTP version":       # HTTP/1.2, HTTP/3.0: Envoy answers 426
        return ParseError(426, LOW_VERSION)
    if msg == "Invalid header value char":
        return ParseError(400, INVALID_CHARACTERS)
    return ParseError(400, CODEC_ERROR)


_METHOD_NAMES = {m.encode(): m for m in METHODS}


def _fields(names_b: list[bytes], values_b: list[bytes]) -> tuple[Headers, int]:
    """Decoded (lower-case name, value) pairs and their http1.head_size() share.

    One join, decode and split per list instead of one per field: names and values
    cannot hold a LF (llhttp rejects it, and obsolete folding).  llhttp strips a
    value's leading whitespace but not its trailing (RFC 9112 5.1); bytes.rstrip()
    strips ASCII whitespace only, so obs-text like \xa0 survives.
    """
    if not names_b:
        return [], 0
    names = b"\n".join(names_b).decode("latin-1")
    values = b"\n".join(values_b).decode("latin-1")
    # (str tests: "x in bytes" first tries the needle as an int, and costs double.)
    if " \n" in values or "\t\n" in values or values[-1:] in " \t":
        values = "\n".join([v.rstrip(" \t") for v in values.split("\n")])
    # Each field counts "name: value\r\n": 4 bytes more than name and value, 2 of
    # them paid by the two joins' separators.
    size = len(names) + len(values) + 2 * len(names_b) + 2
    return list(zip(names.lower().split("\n"), values.split("\n"))), size


class _Parser:
    """What both directions share: header collection, limits, the dead state."""

    __slots__ = ("_events", "_names", "_values", "_add_name", "_add_value", "_max_bytes",
                 "_max_headers", "_state", "_error", "_guard", "_tunnel")

    def __init__(self, max_header_bytes: int, max_headers: int) -> None:
        self._events: list[Event] = []
        self._names: list[bytes] = []       # emptied in place: the appends stay bound
        self._values: list[bytes] = []
        self._add_name = self._names.append
        self._add_value = self._values.append
        self._max_bytes = max_header_bytes
        self._max_headers = max_headers
        self._state = _OPEN
        self._error: ParseError | None = None
        self._guard = 0            # bytes fed without an event while a message is open
        self._tunnel = b""         # bytes after the head that switched protocols

    def take_tunnel_bytes(self) -> bytes:
        """The bytes that followed an Upgrade request's (or a 101 response's) head in the
        read that completed it: the first bytes of the tunnel, not HTTP/1.  Once."""
        data, self._tunnel = self._tunnel, b""
        return data

    def _die(self, error: ParseError) -> ParseError:
        self._state = _DEAD
        self._error = error
        return error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._add_name(name)
        self._add_value(value)

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(body))


class RequestParser(_Parser):
    """Server side: bytes from a downstream client -> RequestHead, Body*, EndOfMessage.

    feed() returns the events of every (pipelined) request the bytes complete, the
    body as it arrives.  ParseError(status, details) is raised with Envoy's answer,
    carrying the events that same feed() parsed before the error (``events``); the
    parser stays dead.  After an Upgrade, CONNECT or Connection: close request, later
    bytes are ignored.
    """

    __slots__ = ("_parser", "_url", "_in_message", "_special", "_has_body")

    def __init__(self, max_header_bytes: int = 60 * 1024, max_headers: int = 100) -> None:
        super().__init__(max_header_bytes, max_headers)
        self._parser = httptools.HttpRequestParser(self)
        # Envoy 1.40 accepts "3 \r\n" / "3\t\r\n" chunk-size lines; llhttp only with this.
        self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
        self._url = b""
        self._in_message = False
        self._special = False      # current message ends the HTTP/1 exchange (upgrade, close)
        self._has_body = False

    def feed(self, data: bytes) -> list[Event]:
        if self._state != _OPEN:
            if self._state == _IGNORE:
                return []
            raise self._error  # type: ignore[misc]
        if not data:
            return []        # llhttp would report an empty body piece
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except _HttpParserUpgrade as exc:
            # llhttp paused after an Upgrade message; the rest is the tunnel's.
            self._state = _IGNORE
            self._tunnel = data[exc.args[0]:]
        except _HttpParserError as exc:
            if self._state != _IGNORE:
                error = self._die(self._error or _request_error(exc))
                if events:
                    # What parsed before the error goes with it: handled first (Envoy
                    # answers a good request before the bad bytes after it).
                    raise error.with_events(events) from None
                raise error from None
        if self._in_message:
            # llhttp has no size limits.  Bytes that produced no event while a message
            # is open are head, chunk-size lines or trailers: bound them, or a client
            # trickling a 1 GB header value would make llhttp's buffering quadratic.
            if events:
                self._guard = 0
            else:
                self._guard += len(data)
                if self._guard > self._max_bytes:
                    raise self._die(ParseError(431, HEADERS_TOO_LARGE))
        return events

    # -- llhttp callbacks -------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url = self._url + url if self._url else url
        self._in_message = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        names_b = self._names
        values_b = self._values
        url = self._url
        self._url = b""
        method = _METHOD_NAMES.get(parser.get_method())
        version = parser.get_http_version()
        if method is None:               # llhttp knows more (M-SEARCH, PRI) than Envoy
            raise self._die(ParseError(400, CODEC_ERROR))
        if version != "1.1" and version != "1.0":
            # HTTP/0.9 ("GET /") and HTTP/2.0 parse in llhttp; Envoy answers 426 low_version.
            raise self._die(ParseError(426, LOW_VERSION))
        target = url.decode("latin-1")
        if url[0] != 47 or method == "CONNECT":          # 47: "/", origin-form
            try:
                check_target(method, target)
            except ParseError as exc:
                raise self._die(exc) from None
        if len(names_b) > self._max_headers:
            raise self._die(ParseError(431, TOO_MANY_HEADERS))
        headers, size = _fields(names_b, values_b)
        names_b.clear()
        values_b.clear()
        # http1.head_size() for the request line "METHOD SP target SP HTTP/1.1 CRLF".
        if size + len(method) + len(url) + 14 > self._max_bytes:
            raise self._die(ParseError(431, HEADERS_TOO_LARGE))
        try:
            length, chunked, expect = request_framing(headers, version == "1.1")
        except ParseError as exc:
            if exc.details == MISSING_HOST:     # the connection manager logs the head
                exc = ParseError(exc.status, exc.details, RequestHead(
                    method, target, version, headers, False, False, None, False, False))
            raise self._die(exc) from None
        alive = parser.should_keep_alive()
        upgrade = parser.should_upgrade()
        if method == "CONNECT":
            # llhttp flags every CONNECT as an upgrade; RequestHead.upgrade means the
            # Upgrade header mechanism (RFC 9110 7.8), so ask the headers.
            upgrade = ("upgrade" in connection_tokens(headers)
                       and any(name == "upgrade" for name, _ in headers))
            self._special = True
        else:
            self._special = upgrade or not alive
        self._has_body = chunked or bool(length)
        self._guard = 0
        self._events.append(RequestHead(method, target, version, headers, alive,
                                        chunked, length, upgrade, expect))

    def on_message_complete(self) -> None:
        self._in_message = False
        trailers = None
        if self._names:
            trailers = self._trailers()
        if not self._special:
            self._events.append(EndOfMessage(trailers))
            return
        # Upgrade / CONNECT / Connection: close: this is the last request on the
        # connection.  An upgrade request with a body gets no EndOfMessage (httptools
        # skips the body of an upgrade); the connection manager answers and closes.
        upgrade = self._parser.should_upgrade()
        if not (self._has_body and upgrade):
            self._events.append(EndOfMessage(trailers))
        self._state = _IGNORE
        if upgrade and self._parser.get_method() != b"CONNECT":
            return      # llhttp pauses itself, saying where the tunnel's bytes start
        raise _Stop

    def _trailers(self) -> Headers:
        trailers, size = _fields(self._names, self._values)
        self._names.clear()
        self._values.clear()
        # Envoy 1.40 drops trailers by default but still 431s a trailer block over
        # max_request_headers_kb (measured); it does not count them against max_headers.
        if size + 2 > self._max_bytes:
            raise self._die(ParseError(431, HEADERS_TOO_LARGE))
        return trailers


class ResponseParser(_Parser):
    """Client side: bytes from an upstream server -> ResponseHead, Body*, EndOfMessage.

    expect(method) before each response; 1xx heads come as head + EndOfMessage
    before the final one.  Bytes after the final response in the same read mark
    it keep_alive=False; bytes fed with no response expected raise ParseError(502).
    feed_eof() ends a close-delimited body, and returns [] if nothing arrived.
    """

    __slots__ = ("_parser", "_reason", "_method", "_started", "_head", "_final", "_done",
                 "_dirty", "_close_delimited")

    # Envoy 1.40's upstream codec takes a response head up to 80 KiB (measured:
    # 81920 bytes -> 200, 81921 -> 502), not the 60 KiB of the downstream side.
    def __init__(self, max_header_bytes: int = 80 * 1024, max_headers: int = 100) -> None:
        super().__init__(max_header_bytes, max_headers)
        self._parser = self._new_parser()
        self._reason = b""
        self._method: str | None = None
        self._started = False      # a byte of the current (non-interim) response arrived
        self._head: ResponseHead | None = None
        self._final = False        # the head being read is not 1xx
        self._done = False         # the final response is complete
        self._dirty = False        # llhttp was stopped mid-stream: needs a fresh parser
        self._close_delimited = False

    def _new_parser(self) -> httptools.HttpResponseParser:
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
        return parser

    def expect(self, method: str) -> None:
        if self._state == _DEAD:
            raise self._error  # type: ignore[misc]
        if self._dirty or (self._started and not self._done):
            # llhttp was stopped on purpose, or left inside a response nobody will finish.
            self._parser = self._new_parser()
            self._dirty = False
        self._method = method
        self._state = _OPEN
        self._started = self._done = False
        self._head = None
        self._guard = 0
        self._close_delimited = False

    def feed(self, data: bytes) -> list[Event]:
        if self._state != _OPEN or self._done or self._method is None:
            if self._state == _IGNORE or not data:
                return []
            # Bytes with no request outstanding: Envoy closes the upstream connection.
            raise self._die(self._error or bad_response())
        if not data:
            return []        # llhttp would report an empty body piece
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except _HttpParserUpgrade as exc:
            self._dirty = True
            self._tunnel = data[exc.args[0]:]     # after a 101: the tunnel's first bytes
        except _HttpParserError:
            self._dirty = True
            if self._error is not None:
                raise self._die(self._error) from None
            if not (self._done or self._state == _IGNORE):
                raise self._die(bad_response()) from None
        if self._started and not self._done:
            if events:
                self._guard = 0
            else:
                self._guard += len(data)
                if self._guard > self._max_bytes:
                    raise self._die(bad_response())
        return events

    def feed_eof(self) -> list[Event]:
        if self._state == _IGNORE or not self._started or self._done:
            return []       # nothing of a (final) response arrived: not a protocol error
        if self._state == _DEAD:
            raise self._error  # type: ignore[misc]
        if self._head is not None and self._close_delimited:
            self._done = True    # RFC 9112 6.3 rule 8: the body ends at the close
            return [EndOfMessage()]
        raise self._die(bad_response())

    # -- llhttp callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:
            # More bytes after the final response (upstreams are never pipelined):
            # deliver the response, but the connection must not be reused.
            if self._head is not None:
                self._head.keep_alive = False
            raise _Stop
        self._started = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        parser = self._parser
        names_b = self._names
        values_b = self._values
        reason = self._reason.decode("latin-1")
        self._reason = b""
        status = parser.get_status_code()
        version = parser.get_http_version()
        # llhttp takes 000-099 and HTTP/2.0 status lines; h11 does not (Envoy 1.40 even
        # forwards "HTTP/1.1 99 X"; RFC 9110 15 defines 100-599).  Refuse both.
        if status < 100 or (version != "1.1" and version != "1.0"):
            raise self._die(bad_response())
        if len(names_b) > self._max_headers:
            raise self._die(bad_response())
        headers, size = _fields(names_b, values_b)
        names_b.clear()
        values_b.clear()
        if size + len(reason) + 17 > self._max_bytes:     # "HTTP/1.1 200 reason\r\n" ...
            raise self._die(bad_response())
        try:
            length, chunked = response_framing(headers, status)
        except ParseError as exc:
            raise self._die(exc) from None
        method = self._method
        interim = status < 200 and status != 101
        # Responses the parser must end at the head (RFC 9112 6.3 rules 1-2): llhttp
        # cannot be told the request method, so HEAD and CONNECT-2xx stop it here.
        stop = status == 101 or method == "HEAD" or (method == "CONNECT" and status < 300
                                                      and not interim)
        if stop or interim:
            alive = keep_alive(version, headers)
        else:
            alive = parser.should_keep_alive()   # False for close-delimited bodies
            self._close_delimited = length is None and not chunked and status not in (204, 304)
        head = ResponseHead(status, reason, version, headers, alive, chunked, length)
        self._events.append(head)
        self._guard = 0
        if interim:
            return             # llhttp ends a 1xx at its head and reads the next one
        self._head = head
        self._final = True
        if stop:
            self._events.append(EndOfMessage())
            self._done = True
            if status == 101 or method == "CONNECT":
                self._state = _IGNORE      # the connection is now a tunnel
            if status == 101:
                return      # llhttp pauses itself, saying where the tunnel's bytes start
            raise _Stop

    def on_message_complete(self) -> None:
        if self._state == _IGNORE:
            return          # a 101: its EndOfMessage went out with the head
        trailers = None
        if self._names:
            trailers, size = _fields(self._names, self._values)
            self._names.clear()
            self._values.clear()
            if size + 2 > self._max_bytes:
                raise self._die(bad_response())
        self._events.append(EndOfMessage(trailers))
        if self._final:
            self._final = False
            self._done = True
        else:
            self._started = False    # a 1xx: the final response is still to come

