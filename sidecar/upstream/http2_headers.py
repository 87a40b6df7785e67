"""The router's HTTP/1-style message heads as HTTP/2 header lists, for an upstream HTTP/2
connection: the request head out (pseudo-headers first), the response head back in.

Kept apart from the connection (sidecar/upstream/http2.py) because it is pure data
translation: no protocol state, no I/O, testable on lists alone.
"""

from __future__ import annotations

from sidecar.codec.events import ResponseHead

# Request headers HTTP/2 forbids (RFC 9113 8.2.2): the router's HTTP/1 framing headers.
# ``host`` is carried as :authority instead (RFC 9113 8.3.1).
CONNECTION_SPECIFIC = frozenset(("connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade", "host"))


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


def response_head(headers: list[tuple[str, str]]) -> ResponseHead | None:
    """The response head from HEADERS (h2 has validated the pseudo-headers), or None for a
    status outside 200-999 (the connection then resets the stream with PROTOCOL_ERROR)."""
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
