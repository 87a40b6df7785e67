"""One downstream HTTP/2 stream's state (and its request body's flow control), and the
request HEADERS block turned into the pieces of a ``Request``: Envoy's header limits and
the pseudo headers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sidecar.codec.events import Headers
from sidecar.http.message import BodyStream, Request

if TYPE_CHECKING:
    from sidecar.http.connection_h2 import Http2Connection

RawHeaders = list[tuple[bytes, bytes]]


def header_limit(raw: RawHeaders, max_count: int, max_size: int) -> str:
    """The http2.* stat of the limit the header list passes, or "" when within both.

    Envoy's limits, whichever is passed first field by field (as nghttp2 decodes):
    the count includes the pseudo headers; the size is HPACK's (name + value + 32
    per field, RFC 9113 6.5.2).
    """
    size = count = 0
    for name, value in raw:
        size += len(name) + len(value) + 32
        count += 1
        if size > max_size:
            return "header_list_size_too_large"
        if count > max_count:
            return "header_overflow"
    return ""


def split_headers(raw: RawHeaders) -> tuple[str, str, str, str, Headers, int | None, bool]:
    """(method, path, authority, scheme, regular headers, content-length, expects 100-continue).

    h2 validated the block (RFC 9113 8.2, 8.3) and joined the cookie fields.
    """
    method = path = authority = scheme = ""
    content_length: int | None = None
    expect_continue = False
    headers: Headers = []
    for name_b, value_b in raw:
        name = name_b.decode("latin-1")
        value = value_b.decode("latin-1")
        if name[0] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
            elif name == ":scheme":
                scheme = value
            continue
        if name == "content-length":
            content_length = int(value) if value.isdigit() else None
        elif name == "expect" and value.lower() == "100-continue":
            expect_continue = True
        headers.append((name, value))
    return method, path, authority, scheme, headers, content_length, expect_continue


class RequestWindow:
    """A request body's flow control (RFC 9113 5.2): while the body's buffer is above its
    watermark (``pause``), received DATA is not acknowledged; once the upstream has read it
    down (``resume``), the client gets that window back.

    Apart from H2Stream on purpose: the body's callbacks hold this, and a stream they held
    would make a reference cycle (stream -> request -> body -> callback -> stream), leaving
    every stream with a body to the cyclic garbage collector."""

    __slots__ = ("conn", "sid", "paused", "unacked")

    def __init__(self, conn: Http2Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.paused = False           # the body buffer is above its watermark
        self.unacked = 0              # DATA bytes received and not yet acknowledged

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        unacked, self.unacked = self.unacked, 0
        conn = self.conn
        if unacked and not conn.closing:
            conn.h2.acknowledge_received_data(unacked, self.sid)
            conn.flush_soon()


class H2Stream:
    """One stream's request, its body's flow-control state and its serving task."""

    __slots__ = ("sid", "request", "body", "task", "window", "status", "done",
                 "window_waiter", "started", "upstream")

    def __init__(self, sid: int, request: Request, body: BodyStream | None, started: float) -> None:
        self.sid = sid
        self.request = request
        self.body = body
        self.task: asyncio.Task[None] | None = None
        self.window: RequestWindow | None = None     # with a body
        self.status = 0               # the response status once its HEADERS were sent
        self.done = False
        self.window_waiter: asyncio.Future[None] | None = None
        self.started = started
        # The upstream connection (HTTP/1) or stream (HTTP/2) while Router.start's callback
        # path waits for its answer.
        self.upstream: Any = None
