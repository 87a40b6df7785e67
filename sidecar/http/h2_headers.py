"""h2's processing of a header block, received (cookie joining, RFC 9113 8.2/8.3 validation,
decoding) or about to be sent (normalizing, validation), in one compiled pass each instead
of h2's chains of Python generators.

``process_received_headers`` is what ``h2.stream.H2Stream._process_received_headers``
computes, for the same input: the same list (cookie fields joined last as one
never-indexed field, then decoded when the connection has a header encoding), or
the same ``h2.exceptions.ProtocolError`` with the same message.  The message
matters: the connection manager tells malformed requests from framing errors by
it, and the first error found is h2's, since the checks run field by field in
h2's order (illegal characters, empty name, TE, connection-specific, pseudo-header
order, Host/:authority, empty :path), then the block-level pseudo-header and
Host/:authority checks.  ``process_outbound_headers`` is, likewise, what h2's
``_build_headers_frames`` passes to the HPACK encoder.  Our HTTP/2 connection
(codec/http2.py) runs both on every header block; h2 is the reference the tests hold
them against.
"""

from __future__ import annotations

from typing import Any, Final

from h2.exceptions import ProtocolError
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

_CONNECTION_HEADERS = frozenset((b"connection", b"proxy-connection", b"keep-alive",
                                 b"transfer-encoding", b"upgrade"))
_ALLOWED_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":status",
                             b":protocol"))
_REQUEST_ONLY = frozenset((b":scheme", b":path", b":authority", b":method", b":protocol"))
_RESPONSE_ONLY = frozenset((b":status",))
_CONNECT_ONLY = frozenset((b":protocol",))
_SECURE = frozenset((b"authorization", b"proxy-authorization"))


def process_received_headers(headers: list[Any], is_trailer: bool, is_response: bool,
                             normalize: bool, validate: bool, encoding: str | None) -> list[Any]:
    if normalize:
        headers = _combine_cookies(headers)
    if validate:
        _validate(headers, is_trailer, is_response, True)
    if encoding is not None:
        # (tuple.__new__: HeaderTuple's own __new__ is Python code.)
        return [(h[0].decode(encoding), h[1].decode(encoding)) if type(h) is tuple
                else tuple.__new__(h.__class__, (h[0].decode(encoding), h[1].decode(encoding)))
                for h in headers]
    return headers


def process_outbound_headers(headers: list[Any], is_trailer: bool, is_response: bool,
                             normalize: bool, split_cookies: bool, validate: bool) -> list[Any]:
    """h2's normalize_outbound_headers then validate_outbound_headers, field by field in
    h2's order: lowercase names, split cookies (when configured), strip whitespace, drop
    connection-specific fields, never index credentials and short cookies; then reject
    TE other than trailers, connection-specific fields, misplaced or missing pseudo-headers,
    a Host/:authority mismatch and an empty :path."""
    if normalize:
        headers = _normalize_outbound(headers, split_cookies)
    if validate:
        _validate(headers, is_trailer, is_response, False)
    return headers


def _normalize_outbound(headers: list[Any], split_cookies: bool) -> list[Any]:
    out: list[Any] = []
    for header in headers:
        name: bytes = header[0].lower()
        typed = isinstance(header, HeaderTuple)
        if split_cookies and name == b"cookie":
            values: list[bytes] = header[1].split(b"; ")
        else:
            values = [header[1]]
        for value in values:
            name_s = name.strip()
            value_s: bytes = value.strip()
            if name_s in _CONNECTION_HEADERS:
                continue
            if name_s in _SECURE or (name_s == b"cookie" and len(value_s) < 20):
                out.append(tuple.__new__(NeverIndexedHeaderTuple, (name_s, value_s)))
            elif typed:
                out.append(header.__class__(name_s, value_s))
            else:
                out.append((name_s, value_s))
    return out


def _combine_cookies(headers: list[Any]) -> list[Any]:
    """RFC 9113 8.2.3: cookie fields joined into one, placed last (as h2 does)."""
    cookies: list[bytes] = []
    out: list[Any] = []
    for header in headers:
        if header[0] == b"cookie":
            cookies.append(header[1])
        else:
            out.append(header)
    if not cookies:
        return headers
    out.append(tuple.__new__(NeverIndexedHeaderTuple, (b"cookie", b"; ".join(cookies))))
    return out


# Fields whose characters passed (_check_characters): the same fields come on every request
# and response (content-type, user-agent, te, grpc-status...), so a set lookup replaces
# the byte-by-byte scan.  Small fields only, and a bounded number (then forgotten at once).
_CHECKED: set[tuple[bytes, bytes]] = set()
_CHECKED_FIELDS: Final = 4096
_CHECKED_FIELD_SIZE: Final = 256


def _validate(headers: list[Any], is_trailer: bool, is_response: bool, inbound: bool) -> None:
    """h2's validate_headers (inbound) or validate_outbound_headers, whose checks are a
    subset: no character, empty-name checks."""
    request = not (is_response or is_trailer)
    pseudo: set[bytes] = set()
    seen_regular = False
    method: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    for header in headers:
        name: bytes = header[0]
        value: bytes = header[1]
        if inbound and header not in _CHECKED:
            _check_characters(name, value)
            if not name:
                raise ProtocolError("Received header name with zero length.")
            if len(name) + len(value) <= _CHECKED_FIELD_SIZE:
                if len(_CHECKED) >= _CHECKED_FIELDS:
                    _CHECKED.clear()
                _CHECKED.add((name, value))
        if name == b"te" and value.lower() != b"trailers":
            raise ProtocolError(f"Invalid value for TE header: {value!r}")
        if name in _CONNECTION_HEADERS:
            raise ProtocolError(f"Connection-specific header field present: {name!r}.")
        if name[0] == 0x3A:         # ":"
            if name in pseudo:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            pseudo.add(name)
            if seen_regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in _ALLOWED_PSEUDO:
                raise ProtocolError(f"Received custom pseudo-header field {name!r}")
            if name == b":method":
                method = value
        else:
            seen_regular = True
        if request:
            if name == b":authority":
                authority = value
            elif name == b"host":
                if host is not None:
                    raise ProtocolError("Request header block has multiple Host headers.")
                host = value
            if name == b":path" and not value:
                raise ProtocolError("An empty :path header is forbidden")
    _check_pseudo_set(pseudo, method, is_trailer, is_response)
    if request:
        if authority is None and host is None:
            raise ProtocolError("Request header block does not have an :authority or Host header.")
        if authority is not None and host is not None and authority != host:
            raise ProtocolError("Request header block has mismatched :authority and "
                                f"Host headers: {authority!r} / {host!r}")


def _check_characters(name: bytes, value: bytes) -> None:
    """RFC 9113 8.2.1: field names lowercase tokens, values without NUL/CR/LF or edge whitespace."""
    for c in name:
        if 0x41 <= c <= 0x5A:
            raise ProtocolError(f"Received uppercase header name {name!r}.")
        if c <= 0x20 or c >= 0x7F:
            raise ProtocolError(f"Illegal character '{chr(c)}' in header name: {name!r}")
    if name.find(b":", 1) != -1:
        raise ProtocolError(f"Illegal character ':' in header name: {name!r}")
    if value:
        for c in value:
            if c == 0 or c == 0x0A or c == 0x0D:
                raise ProtocolError(f"Illegal character '{chr(c)}' in header value: {value!r}")
        first = value[0]
        last = value[len(value) - 1]
        if first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09:
            raise ProtocolError(f"Received header value surrounded by whitespace {value!r}")


def _require(name: bytes, pseudo: set[bytes]) -> None:
    if name not in pseudo:
        raise ProtocolError(f"Header block missing mandatory {name!r} header")


def _check_pseudo_set(pseudo: set[bytes], method: bytes | None, is_trailer: bool,
                      is_response: bool) -> None:
    """h2's _check_pseudo_header_field_acceptability: which pseudo-headers a block may hold."""
    if is_trailer and pseudo:
        raise ProtocolError(f"Received pseudo-header in trailer {pseudo}")
    if is_response:
        _require(b":status", pseudo)
        invalid = pseudo & _REQUEST_ONLY
        if invalid:
            raise ProtocolError(f"Encountered request-only headers {invalid}")
    elif not is_trailer:
        _require(b":method", pseudo)
        is_connect = method == b"CONNECT"
        extended = is_connect and b":protocol" in pseudo
        if is_connect and not extended:
            if b":scheme" in pseudo or b":path" in pseudo:
                raise ProtocolError("Ordinary CONNECT MUST NOT include :scheme or :path")
        else:
            _require(b":scheme", pseudo)
            _require(b":path", pseudo)
        invalid = pseudo & _RESPONSE_ONLY
        if invalid:
            raise ProtocolError(f"Encountered response-only headers {invalid}")
        if not is_connect:
            invalid = pseudo & _CONNECT_ONLY
            if invalid:
                raise ProtocolError(f"Encountered connect-request-only headers {invalid!r}")

