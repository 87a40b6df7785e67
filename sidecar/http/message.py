"""Request, Response and the streamed body between them: what HTTP filters see.

Plain ``__slots__`` classes: one of each is built per request on the hot path.
Headers are a list of (lower-case name, value) pairs without the pseudo
headers, which are attributes (method, path, authority, scheme), as in Envoy's
header map where ``:authority`` is HTTP/1's Host.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from sidecar.codec.events import Headers

# Flow-control watermarks for a body buffered between two connections: above
# HIGH the producer stops reading its socket, below LOW it resumes (as
# Envoy's per_connection_buffer_limit_bytes, default 1 MiB).
DEFAULT_HIGH_WATERMARK = 1024 * 1024


class BodyReset(Exception):
    """The body's producer went away before the end (peer reset or closed)."""


class UpstreamBodyReset(BodyReset):
    """The upstream broke off the response body after its head had been forwarded (Envoy's
    reset after the response started): the request is logged with ``flag`` (UPE, UR, UC)
    and ``details`` upstream_reset_after_response_started{<reason>}."""

    def __init__(self, flag: str, reason: str) -> None:
        super().__init__(f"upstream reset mid-body: {reason}")
        self.flag = flag
        self.details = f"upstream_reset_after_response_started{{{reason}}}"


class DurationReached(BodyReset):
    """The route's max_stream_duration expired while the response body was still coming
    (filters/http/router/stream_duration.py): the connection manager resets the stream."""


class BodyStream:
    """A body flowing from one connection to another, with backpressure.

    The producer calls ``feed``/``feed_eof``/``reset``; the consumer iterates
    with ``async for chunk in body`` (or ``read()``).  When more than
    ``high_watermark`` bytes wait unread, ``on_pause`` is called (the producer
    stops reading its socket); when the consumer has drained it to half,
    ``on_resume``.  So a slow reader never makes the proxy buffer without bound.
    """

    __slots__ = ("_chunks", "_buffered", "_eof", "_error", "_waiter", "_paused",
                 "high_watermark", "on_pause", "on_resume", "trailers", "received")

    def __init__(self, high_watermark: int = DEFAULT_HIGH_WATERMARK,
                 on_pause: Callable[[], None] | None = None,
                 on_resume: Callable[[], None] | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.high_watermark = high_watermark
        self.on_pause = on_pause
        self.on_resume = on_resume
        self.trailers: Headers | None = None
        self.received = 0                 # bytes fed in total

    # --- producer side ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.received += len(data)
        if self._buffered > self.high_watermark and not self._paused and self.on_pause:
            self._paused = True
            self.on_pause()
        self._wake()

    def feed_eof(self, trailers: Headers | None = None) -> None:
        self._eof = True
        self.trailers = trailers
        self._wake()

    def reset(self, error: BaseException) -> None:
        """The producer died: readers get ``error`` once the buffered data is read."""
        if not self._eof:
            self._error = error
            self._eof = True
            self._wake()

    def cut(self, error: BaseException) -> None:
        """End the body now with ``error``, dropping what is buffered unread: nothing more
        of it goes downstream (the proxy resets the stream)."""
        self._chunks.clear()
        self._buffered = 0
        self._error = error
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- consumer side ---------------------------------------------------------

    @property
    def complete(self) -> bool:
        """All of the body has arrived (it may not all be read yet)."""
        return self._eof and self._error is None

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes fed and not read yet."""
        return self._buffered

    def read_nowait(self) -> bytes | None:
        """Return everything buffered now (b"" at end of body), or None if nothing is ready."""
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._consumed()
            return data
        if self._eof:
            if self._error is not None:
                raise self._error
            return b""
        return None

    async def read(self) -> bytes:
        """The next chunk, or b"" at the end of the body; raises the producer's error."""
        while True:
            data = self.read_nowait()
            if data is not None:
                return data
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _consumed(self) -> None:
        self._buffered = 0
        if self._paused and self.on_resume:
            self._paused = False
            self.on_resume()

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data


Body = BodyStream | bytes | None


class Request:
    """One downstream request as the filter chain sees it."""

    __slots__ = ("method", "path", "authority", "scheme", "headers", "body", "version",
                 "keep_alive", "content_length", "chunked", "expect_continue",
                 "route", "cluster_pick", "upstream_pick", "info", "upgrade", "refused")

    def __init__(self, method: str, path: str, authority: str, scheme: str, headers: Headers,
                 body: BodyStream | None, version: str = "1.1", keep_alive: bool = True,
                 content_length: int | None = None, chunked: bool = False,
                 expect_continue: bool = False, info: StreamInfo | None = None) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.route: Any = None            # the RouteEntry the connection manager selected
        self.cluster_pick: Any = None     # (cluster, weighted entry): route_table.route_cluster
        self.upstream_pick: Any = None    # (cluster, weighted entry, host) the router chose early
        self.info = info if info is not None else StreamInfo()
        # An allowed HTTP/1.1 Upgrade: its Upgrade and Connection fields, sent upstream.
        self.upgrade: list[tuple[str, str]] | None = None
        # An HTTP/2 upstream refused the stream Router.start's path sent: the coroutine path's
        # send is the one more it gets (no refused-stream replay of its own).
        self.refused = False

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


class Response:
    """A response head plus its body: bytes (local replies) or a stream (proxied)."""

    __slots__ = ("status", "headers", "body", "content_length", "chunked", "keep_alive",
                 "on_complete", "upgraded")

    def __init__(self, status: int, headers: Headers, body: Body = None,
                 content_length: int | None = None, chunked: bool = False,
                 keep_alive: bool = True) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        # Called once the response has been fully written downstream (or failed):
        # the upstream connection goes back to its pool only then.
        self.on_complete: Callable[[bool], None] | None = None
        # A 101 to an upgrade request: a sidecar.http.upgrade.Switched (the upstream
        # connection, the bytes it sent after the head); the connection manager turns
        # the two connections into a tunnel, or closes both after a 101 that makes none.
        self.upgraded: Any = None


class StreamInfo:
    """Per-request facts for access logs and stats: response flags, upstream host, timing."""

    __slots__ = ("response_flags", "upstream_host", "upstream_cluster", "start_time",
                 "response_code_details", "bytes_received", "bytes_sent",
                 "downstream_remote_address", "downstream_local_address")

    def __init__(self) -> None:
        self.response_flags: list[str] = []      # Envoy's short names: UF, NR, UT, ...
        self.upstream_host: str = ""
        self.upstream_cluster: str = ""
        self.start_time = 0.0
        self.response_code_details = ""
        self.bytes_received = 0
        self.bytes_sent = 0
        self.downstream_remote_address: tuple | None = None
        self.downstream_local_address: tuple | None = None

    def set_flag(self, flag: str) -> None:
        if flag not in self.response_flags:
            self.response_flags.append(flag)

    @property
    def flags_text(self) -> str:
        """As %RESPONSE_FLAGS% prints them: comma-separated, or "-"."""
        return ",".join(self.response_flags) or "-"
