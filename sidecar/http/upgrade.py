"""HTTP/1.1 Upgrade (WebSocket): which upgrades a route allows, the connection manager's
two upgrade steps (the request's Upgrade fields, the 101), and the tunnel after it.

Envoy's model: an upgrade request is routed and forwarded like any request, with
its Upgrade and Connection headers kept; bytes the client sends after the head
wait until the upstream answers.  A 101 turns both connections into one byte
tunnel, which ends when either side closes (Envoy does not half-close an
upgraded HTTP/1 connection: a FIN from either side closes both) or when it has
been idle for the connection manager's stream_idle_timeout.  Any other answer is
an ordinary response, after which the connection closes.

The tunnel takes the two transports over with ``transport.set_protocol``, so
the HTTP/1 connection manager's hot path pays nothing for it.  For the same
reason the two steps live here as functions of the HttpConnection rather than
as its methods: this module stays interpreted, and the compiled connection
manager calls into it only for an Upgrade request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from config import model
from sidecar.codec.events import Headers, RequestHead
from sidecar.codec.http1 import serialize_response_head
from sidecar.http.responding import add_date_server
from sidecar.timers import LazyDeadline

if TYPE_CHECKING:
    from sidecar.http.connection import HttpConnection
    from sidecar.http.message import Request, Response


def upgrade_allowed(configs: tuple[tuple[str, bool], ...], action: Any, kind: str) -> bool:
    """Envoy's rule: the connection manager must list the upgrade type; a route's
    upgrade_configs entry for it, if any, decides, else the manager's ``enabled``."""
    kind = kind.lower()
    for name, enabled in configs:
        if name == kind:
            break
    else:
        return False
    if type(action) is model.RouteAction:
        for name, route_enabled in action.upgrade_configs:
            if name == kind:
                return route_enabled
    return enabled


def upgrade_headers(headers: Headers) -> Headers:
    """The request's Upgrade and Connection fields, forwarded as the client sent them."""
    return [h for h in headers if h[0] == "upgrade" or h[0] == "connection"]


def upgrade_request_fields(conn: HttpConnection, head: RequestHead, authority: str, target: str,
                           headers: Headers) -> Headers | None:
    """An Upgrade request: the Upgrade/Connection fields to forward when its route
    allows the upgrade; None for "serve it as a plain request" or after a refusal.
    The connection closes after the answer either way (the parser stopped at it)."""
    kind = next(v for k, v in head.headers if k == "upgrade").strip()
    if kind.lower() == "h2c":
        # Envoy drops an h2c upgrade offer and serves the request over HTTP/1.1.
        headers[:] = [h for h in headers if h[0] != "http2-settings"]
        return None
    route = conn.ctx.route_table.select(authority, target, head.method, headers, "http")
    if route is None or not upgrade_allowed(conn.ctx.config.upgrade_configs, route.action, kind):
        conn.refuse(head, authority, target, 403, "upgrade_failed")
        return None
    if head.chunked or head.content_length:
        # llhttp hands the body's bytes over as the tunnel's; neither reading is safe.
        conn.refuse(head, authority, target, 400, "upgrade_with_body")
        return None
    return upgrade_headers(head.headers)


def switch_protocols(conn: HttpConnection, request: Request, response: Response) -> None:
    """The upstream said 101: write it, then splice the two connections."""
    upstream, from_upstream = response.upgraded  # type: ignore[misc]
    if conn.closing:
        upstream.abort()
        return
    add_date_server(response.headers, conn.ctx.config)
    head = serialize_response_head(101, response.headers)
    conn.transport.write(head)  # type: ignore[union-attr]
    stats = conn.stats
    stats.downstream_cx_tx_bytes_total += len(head)
    stats.downstream_cx_upgrades_total += 1
    stats.downstream_cx_upgrades_active += 1

    def ended(flag: str) -> None:
        stats.downstream_cx_upgrades_active -= 1
        request.info.set_flag(flag)
        conn.finish(request, 101, response.headers, False)

    held = conn.parser.take()
    tunnel = Tunnel(conn, upstream, request.info, stats, upstream.pool.stats,
                    conn.ctx.config.stream_idle_timeout, ended)
    tunnel.start(held, from_upstream)


class HeldTunnelBytes:
    """Stands in for the request parser between an upgrade request and its answer.

    Bytes the client sends meanwhile are the tunnel's, not HTTP/1: they are kept
    (reading pauses above ``limit``) and go upstream only after a 101, as Envoy.
    """

    __slots__ = ("chunks", "size", "limit", "pause", "info")

    def __init__(self, first: bytes, limit: int, pause: Callable[[], None], info: Any) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.pause = pause
        self.info = info
        self.feed(first)

    def feed(self, data: bytes) -> list[Any]:
        if data:
            self.chunks.append(data)
            self.size += len(data)
            self.info.bytes_received += len(data)
            if self.size > self.limit:
                self.pause()
        return []

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


class _End(asyncio.Protocol):
    """One side of the tunnel: what it reads goes out the other side."""

    def __init__(self, tunnel: Tunnel, transport: Any, downstream: bool) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.downstream = downstream
        self.peer: _End | None = None

    def data_received(self, data: bytes) -> None:
        self.tunnel.carry(self, data)

    def eof_received(self) -> bool:
        self.tunnel.end("DC" if self.downstream else "UC")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.lost(self, exc)

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()


class Tunnel:
    """The downstream and upstream connections of one upgraded request, spliced.

    ``http`` is the downstream HttpConnection and ``upstream`` the pooled
    Http1UpstreamConnection: their connection_lost still runs for each
    transport (connection stats, the pool's bookkeeping); ``on_end(flag)`` runs
    once, when the tunnel starts to close, to finish the request's accounting.
    """

    def __init__(self, http: Any, upstream: Any, request_info: Any, stats: Any,
                 cluster_stats: Any, idle_timeout: float | None,
                 on_end: Callable[[str], None]) -> None:
        self.http = http
        self.upstream = upstream
        self.info = request_info
        self.stats = stats
        self.cluster_stats = cluster_stats
        self.on_end: Callable[[str], None] | None = on_end
        self.down = _End(self, http.transport, True)
        self.up = _End(self, upstream.transport, False)
        self.down.peer, self.up.peer = self.up, self.down
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.idle = LazyDeadline(self.loop, self._idle_expired)

    def start(self, from_client: bytes, from_upstream: bytes) -> None:
        """Take both transports over and pass on what each side sent before the switch."""
        if self.upstream.closed:
            self.end("UC")
            return
        self.http.transport.set_protocol(self.down)
        self.upstream.transport.set_protocol(self.up)
        self._touch()
        if from_upstream:
            self.carry(self.up, from_upstream)
        if from_client:
            self.carry(self.down, from_client, counted=True)
        self.http.transport.resume_reading()

    def carry(self, source: _End, data: bytes, counted: bool = False) -> None:
        n = len(data)
        if source.downstream:
            if not counted:         # bytes held before the 101 were counted on arrival
                self.stats.downstream_cx_rx_bytes_total += n
                self.info.bytes_received += n
            self.cluster_stats.upstream_cx_tx_bytes_total += n
        else:
            self.cluster_stats.upstream_cx_rx_bytes_total += n
            self.stats.downstream_cx_tx_bytes_total += n
            self.info.bytes_sent += n
        self._touch()
        peer = source.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def _touch(self) -> None:
        if self.idle_timeout is not None:
            self.idle.set(self.loop.time() + self.idle_timeout)

    def _idle_expired(self) -> None:
        self.stats.downstream_rq_idle_timeout += 1
        self.end("SI")

    def end(self, flag: str) -> None:
        """Close both sides (each flushes what it has to write first), once."""
        on_end, self.on_end = self.on_end, None
        if on_end is None:
            return
        self.idle.cancel()
        on_end(flag)
        for transport in (self.http.transport, self.upstream.transport):
            if not transport.is_closing():
                transport.close()

    def lost(self, side: _End, exc: Exception | None) -> None:
        self.end("DC" if side.downstream else "UC")
        if side.downstream:
            self.http.connection_lost(exc)
        else:
            self.upstream.connection_lost(exc)
