"""HTTP/2 connection pool for one upstream host: streams multiplexed over few connections.

As Envoy's HTTP/2 pool: a request takes a stream on a connection with room
(the server's SETTINGS_MAX_CONCURRENT_STREAMS, the cluster's own
max_concurrent_streams, max_requests_per_connection); only when every
connection is full does the pool open another (within the max_connections
circuit breaker).  Requests wait meanwhile as pending requests
(max_pending_requests).  A connection that got GOAWAY, or served its
max_requests_per_connection, takes no new stream and closes after its last.
The same interface as Http1Pool for the router: ``take_idle()`` (a stream now,
or None), ``acquire(deadline)`` (a stream, waiting and connecting as needed),
``close()``, and the same per-host counters for admin /clusters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sidecar.http import local_reply
from sidecar.http.local_reply import LocalReply
from sidecar.stats import ClusterStats
from sidecar.upstream.connect_failure import connect_failed
from sidecar.upstream.cx_destroy import CLOSER_LOCAL, count_destroy
from sidecar.upstream.http2 import (DEFAULT_CONNECTION_WINDOW, DEFAULT_STREAM_WINDOW,
                                    Http2UpstreamConnection)
from sidecar.upstream.http2_stream import Http2Stream


class Http2Pool:
    # upstream_bind_config.source_address (port 0): the cluster sets it on new pools.
    local_addr: tuple[str, int] | None = None
    def __init__(self, address: str, port: int, stats: ClusterStats, connect_timeout: float,
                 idle_timeout: float | None, max_requests_per_connection: int, buffer_limit: int,
                 breaker: Any = None, max_concurrent_streams: int = 2**31 - 1,
                 stream_window: int = DEFAULT_STREAM_WINDOW,
                 connection_window: int = DEFAULT_CONNECTION_WINDOW,
                 keepalive: tuple[float, float] | None = None) -> None:
        self.address = address
        self.port = port
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests_per_connection
        self.buffer_limit = buffer_limit
        self.breaker = breaker
        self.max_streams = max_concurrent_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.keepalive = keepalive            # (interval, timeout) of connection_keepalive
        self.connections: list[Http2UpstreamConnection] = []
        self.connecting = 0
        self.closed = False
        self.waiters: list[asyncio.Future[None]] = []
        self.connect_task: asyncio.Task[None] | None = None
        # Envoy's per-host stats (admin /clusters), as Http1Pool keeps them.
        self.cx_total = self.cx_connect_fail = self.rq_pending_active = 0
        self.rq_total = self.rq_success = self.rq_error = self.rq_timeout = 0

    def __repr__(self) -> str:
        streams = [len(c.streams) for c in self.connections]
        return f"<Http2Pool {self.address}:{self.port} streams={streams}>"

    # the connection count the cluster's max_connections breaker sees (Http1Pool: busy + idle)
    @property
    def busy(self) -> list[Http2UpstreamConnection]:
        return self.connections

    @property
    def idle(self) -> list[Http2UpstreamConnection]:
        return []

    def take_idle(self) -> Http2Stream | None:
        """A stream on a connection with room now, or None."""
        for conn in self.connections:
            if conn.capacity > 0:
                self.rq_total += 1
                return conn.new_stream()
        return None

    async def acquire(self, deadline: float | None = None) -> Http2Stream:
        """A stream, once a connection has room: pending meanwhile (max_pending_requests,
        else 503 UO); a connection is opened when none has room (max_connections)."""
        stats = self.stats
        breaker = self.breaker
        if breaker is not None and stats.upstream_rq_pending_active >= breaker.max_pending_requests:
            stats.upstream_rq_pending_overflow += 1
            raise local_reply.overflow()
        stats.upstream_rq_pending_total += 1
        stats.upstream_rq_pending_active += 1
        self.rq_pending_active += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                stream = self.take_idle()
                if stream is not None:
                    return stream
                if self.closed:
                    raise local_reply.connection_termination()
                if self.connect_task is None and self._may_connect():
                    self.connect_task = loop.create_task(self._connect(deadline))
                waiter: asyncio.Future[None] = loop.create_future()
                self.waiters.append(waiter)
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                except TimeoutError:
                    raise local_reply.upstream_timeout() from None
                finally:
                    if waiter in self.waiters:
                        self.waiters.remove(waiter)
        finally:
            stats.upstream_rq_pending_active -= 1
            self.rq_pending_active -= 1

    def _may_connect(self) -> bool:
        breaker = self.breaker
        if breaker is None or not self.connections:
            return True
        if breaker.connections() < breaker.max_connections:
            return True
        self.stats.upstream_cx_overflow += 1
        return False

    def _wake(self, error: Callable[[], LocalReply] | None = None) -> None:
        """Wake the pending requests: to look for room again, or to fail with ``error()``
        (each its own reply: replies are mutable)."""
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is not None:
                    waiter.set_exception(error())
                else:
                    waiter.set_result(None)

    async def _connect(self, deadline: float | None) -> None:
        """Open one connection; wake the pending requests (with the error if it failed)."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_http2_total += 1
        self.cx_total += 1
        breaker = self.breaker
        if breaker is not None:
            breaker.connecting += 1
        self.connecting += 1
        error: Callable[[], LocalReply] | None = None
        conn: Http2UpstreamConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Http2UpstreamConnection(self, self.stream_window,
                                                    self.connection_window, self.buffer_limit),
                    self.address, self.port, local_addr=self.local_addr)
                await conn.ready        # the server's SETTINGS: its stream limit
        except OSError as e:    # TimeoutError is one too; connect_failed tells them apart
            error = connect_failed(self, e)
            if (isinstance(e, TimeoutError) and conn is not None
                    and conn.transport is not None):
                conn.transport.abort()      # connected, but no SETTINGS came
        finally:
            self.connecting -= 1
            if breaker is not None:
                breaker.connecting -= 1
            self.connect_task = None
        if error is not None or conn is None:
            self._wake(error)
            return
        stats.upstream_cx_active += 1
        self.connections.append(conn)
        if self.closed:
            conn.close()
        elif self.keepalive is not None:
            conn.start_keepalive(*self.keepalive)
        self._wake()

    # --- called by the connections --------------------------------------------------

    def stream_released(self, conn: Http2UpstreamConnection) -> None:
        """A stream ended (or the server's settings changed): room for a pending request."""
        if self.waiters and conn.capacity > 0:
            self._wake()

    def lost(self, conn: Http2UpstreamConnection) -> None:
        if conn not in self.connections:
            return              # closed before it was ready: _connect counted the failure
        self.connections.remove(conn)
        stats = self.stats
        stats.upstream_cx_active -= 1
        count_destroy(stats, conn.closer == CLOSER_LOCAL, conn.active_rq)
        if self.waiters:
            self._wake()            # they connect anew

    def close(self) -> None:
        """Close idle connections now; connections with streams close after their last."""
        self.closed = True
        self._wake()
        for conn in list(self.connections):
            conn.goaway = True
            if not conn.streams:
                conn.close()
