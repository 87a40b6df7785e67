"""HTTP/1.1 connection pool for one upstream host: keep-alive reuse, idle timeout, connect timeout.

Bookkeeping is in small predicates (``usable``) and two lists; ``repr(pool)``
shows the state, and tests assert on it.
"""

from __future__ import annotations

import asyncio
import os
import logging
from collections.abc import Callable
from typing import Any

from sidecar.http import local_reply
from sidecar.stats import ClusterStats
from sidecar.upstream.http1 import Http1UpstreamConnection

log = logging.getLogger(__name__)


class Http1Pool:
    def __init__(self, address: str, port: int, stats: ClusterStats, parser_factory: Callable[[], Any],
                 connect_timeout: float, idle_timeout: float | None,
                 max_requests_per_connection: int, buffer_limit: int) -> None:
        self.address = address
        self.port = port
        self.stats = stats
        self.parser_factory = parser_factory
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests_per_connection
        self.buffer_limit = buffer_limit
        self.idle: list[Http1UpstreamConnection] = []     # LIFO: the warmest connection first
        self.busy: set[Http1UpstreamConnection] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<Http1Pool {self.address}:{self.port} idle={len(self.idle)} busy={len(self.busy)}>"

    def take_idle(self) -> Http1UpstreamConnection | None:
        """The warmest idle connection still usable, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.idle_deadline.clear()
            if conn.usable:
                self.busy.add(conn)
                return conn
        return None

    async def connect(self, deadline: float | None = None) -> Http1UpstreamConnection:
        """A new connection, within connect_timeout and the route's ``deadline`` (loop time).

        Raises LocalReply: UF on refusal or connect timeout, UT when the route's
        deadline comes first (Envoy's route timeout includes connecting).
        """
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_http1_total += 1
        timeout = self.connect_timeout
        route_deadline_first = False
        if deadline is not None and deadline - loop.time() < timeout:
            timeout = max(deadline - loop.time(), 0.0)
            route_deadline_first = True
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Http1UpstreamConnection(self, self.parser_factory(), self.buffer_limit),
                    self.address, self.port)
        except TimeoutError:
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_connect_timeout += 1
            if route_deadline_first:
                raise local_reply.upstream_timeout() from None
            raise local_reply.connect_timeout() from None
        except OSError as e:
            stats.upstream_cx_connect_fail += 1
            log.debug("connect to %s:%s failed: %s", self.address, self.port, e)
            raise local_reply.connect_failure(os.strerror(e.errno) if e.errno else "") from None
        stats.upstream_cx_active += 1
        self.busy.add(conn)
        return conn

    def release(self, conn: Http1UpstreamConnection) -> None:
        """The request/response exchange is over: keep the connection warm, or close it."""
        self.busy.discard(conn)
        if self.max_requests and conn.requests >= self.max_requests:
            self.stats.upstream_cx_max_requests += 1
            conn.reusable = False
        if not conn.usable or self.closed:
            if not conn.closed:
                self.stats.upstream_cx_destroy_local += 1
                conn.transport.close()  # type: ignore[union-attr]
            return
        if self.idle_timeout is not None:
            conn.idle_deadline.set(conn.idle_deadline.loop.time() + self.idle_timeout)
        self.idle.append(conn)

    def idle_expired(self, conn: Http1UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
            self.stats.upstream_cx_idle_timeout += 1
            self.stats.upstream_cx_destroy_local += 1
            conn.transport.close()  # type: ignore[union-attr]

    def lost(self, conn: Http1UpstreamConnection) -> None:
        """The connection closed (either side): forget it."""
        stats = self.stats
        stats.upstream_cx_active -= 1
        stats.upstream_cx_destroy += 1
        self.busy.discard(conn)
        if conn in self.idle:
            # Closed by the upstream while idle in the pool.
            stats.upstream_cx_destroy_remote += 1
            self.idle.remove(conn)

    def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self.closed = True
        for conn in self.idle:
            conn.transport.close()  # type: ignore[union-attr]
        self.idle.clear()
