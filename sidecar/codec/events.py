"""The event vocabulary shared by every HTTP/1 codec adapter (httptools and h11).

Header names are lower-case ``str``; names and values are decoded as latin-1 so
that encoding them back gives the exact bytes received.  Plain ``__slots__``
classes rather than frozen dataclasses: they are built once per message on the
hot path and frozen-dataclass construction costs several times more.
"""

from __future__ import annotations

Headers = list[tuple[str, str]]


class RequestHead:
    __slots__ = ("method", "target", "version", "headers", "keep_alive",
                 "chunked", "content_length", "upgrade", "expect_continue")

    def __init__(self, method: str, target: str, version: str, headers: Headers,
                 keep_alive: bool, chunked: bool, content_length: int | None,
                 upgrade: bool, expect_continue: bool) -> None:
        self.method = method                  # "GET"
        self.target = target                  # request-target as sent: "/a?b", "http://h/a", "*"
        self.version = version                # "1.1", "1.0" ("0.9" is rejected by the parser)
        self.headers = headers                # in order, duplicates kept
        self.keep_alive = keep_alive          # per RFC 9112 9.3 (version + Connection header)
        self.chunked = chunked                # Transfer-Encoding: chunked
        self.content_length = content_length  # None when absent
        self.upgrade = upgrade                # an Upgrade header with Connection: upgrade
        self.expect_continue = expect_continue  # Expect: 100-continue

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.target} HTTP/{self.version} {self.headers!r})"


class ResponseHead:
    __slots__ = ("status", "reason", "version", "headers", "keep_alive",
                 "chunked", "content_length")

    def __init__(self, status: int, reason: str, version: str, headers: Headers,
                 keep_alive: bool, chunked: bool, content_length: int | None) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length

    def __repr__(self) -> str:
        return f"ResponseHead({self.status} {self.reason} HTTP/{self.version} {self.headers!r})"


class Body:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Body({self.data!r})"


class EndOfMessage:
    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"EndOfMessage({self.trailers!r})"


Event = RequestHead | ResponseHead | Body | EndOfMessage


class ParseError(Exception):
    """The peer sent bytes that are not acceptable HTTP/1.

    ``status`` is the response Envoy gives for it (400, 431, ...) and ``details``
    a short reason (Envoy's response code details, e.g. ``http1.codec_error``).
    After a ParseError the parser is dead: the connection must be closed.
    ``head`` is the request head it refused, when Envoy's connection manager (not its
    codec) is the one to refuse it (a missing Host), so the access log can name it.
    ``events`` (request parsers) are what the same feed() parsed before the error:
    the client's earlier requests, or the head and body of the request it broke, to be
    handled before the error (a dead parser raising it again carries none).
    """

    def __init__(self, status: int, details: str, head: RequestHead | None = None,
                 events: list[Event] | None = None) -> None:
        super().__init__(f"{status} {details}")
        self.status = status
        self.details = details
        self.head = head
        self.events: list[Event] = events if events is not None else []

    def with_events(self, events: list[Event]) -> ParseError:
        """This error, carrying the events parsed before it (a copy: the parser keeps
        the event-free original to raise again)."""
        return ParseError(self.status, self.details, self.head, events)
