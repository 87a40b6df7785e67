"""HTTP/1.1 connection pool for one upstream host: keep-alive reuse, idle timeout, connect timeout.

Bookkeeping is in small predicates (``usable``) and two lists; ``repr(pool)``
shows the state, and tests assert on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sidecar.http import local_reply
from sidecar.stats import ClusterStats
from sidecar.upstream.connect_failure import connect_failed
from sidecar.upstream.cx_destroy import CLOSER_LOCAL, count_destroy
from sidecar.upstream.http1 import Http1UpstreamConnection


class Http1Pool:
    # upstream_bind_config.source_address (port 0): the cluster sets it on new pools.
    local_addr: tuple[str, int] | None = None
    def __init__(self, address: str, port: int, stats: ClusterStats, parser_factory: Callable[[], Any],
                 connect_timeout: float, idle_timeout: float | None,
                 max_requests_per_connection: int, buffer_limit: int, breaker: Any = None) -> None:
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
        # The cluster (ClusterRuntime) whose circuit breakers bound this pool: max_connections
        # (with ``connecting``), max_pending_requests.  None: unbounded (unit tests).
        self.breaker = breaker
        self.connecting = 0
        # Requests waiting for a connection to free up (max_connections reached): each gets
        # a released connection, or None when a connection closed (connect anew).
        self.waiters: list[asyncio.Future[Http1UpstreamConnection | None]] = []
        # Envoy's per-host stats (admin /clusters).  The pool lives as long as its address
        # stays in the cluster, as an Envoy host does.  rq_total counts requests written
        # (Http1UpstreamConnection.send_head); the router's per-attempt outcome reports
        # (upstream_request.host_responded / host_failed) count success, error, timeout.
        self.cx_total = self.cx_connect_fail = self.rq_pending_active = 0
        self.rq_total = self.rq_success = self.rq_error = self.rq_timeout = 0

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

    async def acquire(self, deadline: float | None = None) -> Http1UpstreamConnection:
        """A connection for a request that found no idle one, as Envoy's pool: the request
        is pending (bounded by max_pending_requests, else 503 UO) until a new connection is
        up, or, at max_connections, until a busy one is released.  A pool without any
        connection always opens one (as Envoy)."""
        breaker = self.breaker
        if breaker is None:
            return await self.connect(deadline)
        stats = self.stats
        if stats.upstream_rq_pending_active >= breaker.max_pending_requests:
            stats.upstream_rq_pending_overflow += 1
            raise local_reply.overflow()
        stats.upstream_rq_pending_total += 1
        stats.upstream_rq_pending_active += 1
        self.rq_pending_active += 1
        try:
            if (breaker.connections() < breaker.max_connections
                    or not (self.busy or self.idle or self.connecting)):
                return await self.connect(deadline)
            stats.upstream_cx_overflow += 1
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[Http1UpstreamConnection | None] = loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await waiter
            except TimeoutError:
                raise local_reply.upstream_timeout() from None
            except BaseException:
                handed = waiter.result() if waiter.done() and not waiter.cancelled() else None
                if handed is not None:
                    self.release(handed)        # handed over just as the request went away
                raise
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            if conn is None:
                return await self.connect(deadline)
            return conn
        finally:
            stats.upstream_rq_pending_active -= 1
            self.rq_pending_active -= 1

    def _wake(self, conn: Http1UpstreamConnection | None) -> bool:
        """Hand ``conn`` (or a free connection slot: None) to the first waiting request."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def connect(self, deadline: float | None = None) -> Http1UpstreamConnection:
        """A new connection, within connect_timeout and the route's ``deadline`` (loop time).

        Raises LocalReply: UF on refusal or connect timeout, UT when the route's
        deadline comes first (Envoy's route timeout includes connecting).
        """
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_http1_total += 1
        self.cx_total += 1
        timeout = self.connect_timeout
        route_deadline_first = False
        if deadline is not None and deadline - loop.time() < timeout:
            timeout = max(deadline - loop.time(), 0.0)
            route_deadline_first = True
        breaker = self.breaker
        if breaker is not None:
            breaker.connecting += 1
        self.connecting += 1
        connected = False
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Http1UpstreamConnection(self, self.parser_factory(), self.buffer_limit),
                    self.address, self.port, local_addr=self.local_addr)
            connected = True
        except OSError as e:    # TimeoutError is one too; connect_failed tells them apart
            reply = connect_failed(self, e)
            if route_deadline_first and isinstance(e, TimeoutError):
                raise local_reply.upstream_timeout() from None
            raise reply() from None
        finally:
            self.connecting -= 1
            if breaker is not None:
                breaker.connecting -= 1
            if not connected and self.waiters:
                self._wake(None)        # a failed connect frees its slot
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
            conn.close()
            return
        if self.waiters and self._wake(conn):
            self.busy.add(conn)         # straight to a request waiting for a connection
            return
        if self.idle_timeout is not None:
            conn.idle_deadline.set(conn.idle_deadline.loop.time() + self.idle_timeout)
        self.idle.append(conn)

    def idle_expired(self, conn: Http1UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
            self.stats.upstream_cx_idle_timeout += 1
            conn.close()

    def lost(self, conn: Http1UpstreamConnection) -> None:
        """The connection closed (either side): count it, as Envoy, and forget it."""
        stats = self.stats
        stats.upstream_cx_active -= 1
        count_destroy(stats, conn.closer == CLOSER_LOCAL, conn.active_rq)
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)      # closed by the upstream while idle in the pool
        if self.waiters:
            self._wake(None)            # its slot is free: a waiting request connects

    def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self.closed = True
        while self.waiters and self._wake(None):
            pass                        # requests waiting for a connection connect anew
        for conn in self.idle:
            conn.close()
        self.idle.clear()
