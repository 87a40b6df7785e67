"""HTTP/1.1 wire serialization, the parse policy both parser adapters share, and adapter selection.

The two parser adapters (``http1_httptools``: the hot path over llhttp;
``http1_h11``: the pure-Python reference) must accept and reject exactly the same
bytes, and what they accept or reject is what Envoy 1.40 does (checked against the
real binary, see tests/codec/test_http1_table.py).  The policy that is not the
parsing library's own lives here, once, so the two cannot drift apart.
"""

from __future__ import annotations

import importlib

from sidecar.codec.events import Headers, ParseError

# --- response code details (Envoy's strings, so access logs read the same) -------------

CODEC_ERROR = "http1.codec_error"
HEADERS_TOO_LARGE = "http1.headers_too_large"
TOO_MANY_HEADERS = "http1.too_many_headers"
INVALID_CHARACTERS = "http1.invalid_characters"
INVALID_TRANSFER_ENCODING = "http1.invalid_transfer_encoding"
CONTENT_LENGTH_AND_CHUNKED = "http1.content_length_and_chunked_not_allowed"
INVALID_URL = "http1.invalid_url"
INVALID_SCHEME = "http1.invalid_scheme"
# Not parse errors in Envoy's layering (the connection manager answers these), but a
# request that the parser cannot represent has to be refused here with Envoy's answer.
LOW_VERSION = "low_version"
MISSING_HOST = "missing_host_header"
UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error"

# Envoy's BalsaParser::isMethodValid() list (source/common/http/http1/balsa_parser.cc),
# plus QUERY which Envoy 1.40 accepts at the codec.  Envoy lists "MSEARCH" where
# http-parser had "M-SEARCH"; llhttp cannot parse "MSEARCH" at all, so neither
# spelling is accepted here (Envoy 1.40: M-SEARCH -> 400, MSEARCH -> 200).
METHODS = frozenset((
    "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK",
    "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE", "NOTIFY", "OPTIONS", "PATCH",
    "POST", "PROPFIND", "PROPPATCH", "PURGE", "PUT", "QUERY", "REBIND", "REPORT", "SEARCH",
    "SOURCE", "SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE"))

MAX_CONTENT_LENGTH = 2**64 - 1      # Envoy and llhttp: uint64; 2**64 -> 400


def bad_request(details: str = CODEC_ERROR) -> ParseError:
    return ParseError(400, details)


def bad_response() -> ParseError:
    return ParseError(502, UPSTREAM_PROTOCOL_ERROR)


def check_target(method: str, target: str) -> None:
    """Envoy's checks on a request-target that is not origin-form ("/...").

    Envoy (ServerConnectionImpl::handlePath): "*" only for OPTIONS, CONNECT takes
    authority-form, anything else must be an absolute http(s) URL with a host.  The
    character-level checks are the parsers' (llhttp's URL grammar is what Envoy's
    isUrlValid() was written to match; the h11 adapter repeats it).
    """
    if method == "CONNECT":
        # Envoy 1.40: "CONNECT /m" -> 400 invalid_url; authority-form is host ":" port.
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or "/" in target:
            raise bad_request(INVALID_URL)
        return
    if target[0] == "*":
        if method != "OPTIONS":
            raise bad_request(INVALID_URL)
        return
    scheme, sep, rest = target.partition("://")
    if not sep or not scheme.isalpha():
        raise bad_request()
    host = rest
    for i, char in enumerate(rest):
        if char == "/" or char == "?":
            host = rest[:i]
            break
    if host.strip(_HOST_CHARS) or "@@" in host:       # Envoy's isUrlValid() host rule
        raise bad_request()
    if scheme.lower() not in ("http", "https"):
        raise bad_request(INVALID_SCHEME)             # Envoy 1.40: ftp://... -> 400
    if not host:
        raise bad_request(INVALID_URL)                # "http:///x" -> 400 invalid_url


_HOST_CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               "!$%&'()*+,-.:;=@[]_~")


_FRAMING = frozenset(("content-length", "transfer-encoding", "host", "expect"))


def request_framing(headers: Headers, http11: bool) -> tuple[int | None, bool, bool]:
    """(content_length, chunked, expect_continue) of a request head, with Envoy's rejects.

    Envoy 1.40: any Content-Length together with Transfer-Encoding -> 400
    content_length_and_chunked_not_allowed (RFC 9112 6.3 lets a server reject it);
    a second Content-Length, even an equal one or "3, 3" -> 400; a Transfer-Encoding
    that is not exactly one "chunked" (gzip, chunked; chunked, chunked; two headers;
    identity) -> 501 invalid_transfer_encoding.  RFC 9112 3.2: an HTTP/1.1 request
    without exactly one Host -> 400 (Envoy lets two Host headers through; h11 cannot).
    """
    cl_value: str | None = None
    te_value = ""
    te_count = hosts = 0
    expect = False
    for name, value in headers:
        if name in _FRAMING:
            if name == "content-length":
                if cl_value is not None:
                    raise bad_request()
                cl_value = value
            elif name == "transfer-encoding":
                te_count += 1
                te_value = value
            elif name == "host":
                hosts += 1
            else:
                # RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
                expect = http11 and value.lower() == "100-continue"
    length = None
    if cl_value is not None:
        if te_count:
            raise bad_request(CONTENT_LENGTH_AND_CHUNKED)
        length = _content_length(cl_value)
        if length is None:
            raise bad_request()
    if te_count and (te_count > 1 or te_value.lower() != "chunked"):
        raise ParseError(501, INVALID_TRANSFER_ENCODING)
    if hosts != 1 and (hosts or http11):
        raise bad_request(CODEC_ERROR if hosts else MISSING_HOST)
    return length, te_count == 1, expect


def response_framing(headers: Headers, status: int) -> tuple[int | None, bool]:
    """(content_length, chunked) of a response head; ParseError(502) where Envoy resets.

    Same Content-Length / Transfer-Encoding rules as requests (a response with
    "Transfer-Encoding: gzip" is refused, not read to EOF), and Envoy 1.40 refuses
    Transfer-Encoding, and any Content-Length but the exact string "0" ("00" is
    refused), on 1xx and 204 (RFC 9110 8.6; 304 may carry both).
    """
    cl_value: str | None = None
    te_value = ""
    te_count = 0
    for name, value in headers:
        if name == "content-length":
            if cl_value is not None:
                raise bad_response()
            cl_value = value
        elif name == "transfer-encoding":
            te_count += 1
            te_value = value
    if (status < 200 or status == 204) and (te_count or cl_value not in (None, "0")):
        raise bad_response()
    length = None
    if cl_value is not None:
        length = _content_length(cl_value)
        if length is None or te_count:
            raise bad_response()
    if te_count and (te_count > 1 or te_value.lower() != "chunked"):
        raise bad_response()
    return length, te_count == 1


def _content_length(value: str) -> int | None:
    # RFC 9110 8.6: 1*DIGIT.  Leading zeros are fine (Envoy: "003" -> 3); "+3", "3, 3",
    # "" and values past uint64 are not.  isascii() because str.isdigit() takes "\xb2".
    if not (value.isascii() and value.isdigit()):
        return None
    length = int(value)
    return length if length <= MAX_CONTENT_LENGTH else None


def keep_alive(version: str, headers: Headers) -> bool:
    """RFC 9112 9.3: "close" ends the connection; HTTP/1.0 needs "keep-alive" to persist."""
    tokens = connection_tokens(headers)
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens


def connection_tokens(headers: Headers) -> set[str]:
    """The options of every Connection header, lower-case (RFC 9110 7.6.1)."""
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip(" \t").lower() for t in value.split(","))
    return tokens


def head_size(start_line_len: int, names: list[str], values: list[str]) -> int:
    """The size Envoy compares with max_request_headers_kb, for a canonically formatted head.

    Envoy 1.40 rejects when the raw head (start line through the blank line) exceeds
    the limit (measured: 61440 bytes -> 200, 61441 -> 431, however the bytes are
    spread over the URL and headers).  The adapters cannot see raw offsets, so this
    is the length of the head as we would re-serialize it ("name: value\\r\\n"): exact
    for the usual formatting, short by any extra optional whitespace.
    """
    return (start_line_len + 4 + 4 * len(names)
            + sum(map(len, names)) + sum(map(len, values)))


# --- serialization ----------------------------------------------------------------------

def serialize_request_head(method: str, target: str, headers: Headers) -> bytes:
    """``METHOD target HTTP/1.1`` + headers + blank line, latin-1, built in one join."""
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def serialize_response_head(status: int, headers: Headers, reason: str | None = None) -> bytes:
    """``HTTP/1.1 status reason`` + headers + blank line; reason from REASONS when None."""
    if reason is None:
        reason = REASONS.get(status, "Unknown")   # Envoy: CodeUtility::toString -> "Unknown"
    parts = ["HTTP/1.1 ", str(status), " ", reason, "\r\n"]
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


LAST_CHUNK = b"0\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    """One chunk (RFC 9112 7.1).  Empty data would read as the last chunk: encode nothing."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Headers | None) -> bytes:
    """The last chunk with an optional trailer section (RFC 9112 7.1.2)."""
    if not trailers:
        return LAST_CHUNK
    parts = ["0\r\n"]
    for name, value in trailers:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


# Envoy's CodeUtility::toString() (source/common/http/codes.cc) plus the 1xx codes.
REASONS: dict[int, str] = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    416: "Range Not Satisfiable", 417: "Expectation Failed", 421: "Misdirected Request",
    422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
    426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage", 508: "Loop Detected",
    510: "Not Extended", 511: "Network Authentication Required",
}


PARSER_MODULES = {"httptools": "sidecar.codec.http1_httptools", "h11": "sidecar.codec.http1_h11"}


def get_parsers(name: str = "httptools") -> tuple[type, type]:
    """(RequestParser, ResponseParser) of the named adapter: "httptools" (default) or "h11"."""
    if name not in PARSER_MODULES:
        raise ValueError(f"unknown HTTP/1 parser {name!r} (expected 'httptools' or 'h11')")
    # Imported by name, not with a conditional `from ... import ... as mod`, which
    # mypyc compiles wrongly (the local stayed None for the module imported second).
    mod = importlib.import_module(PARSER_MODULES[name])
    return mod.RequestParser, mod.ResponseParser
