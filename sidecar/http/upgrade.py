"""HTTP/1.1 Upgrade (WebSocket): which upgrades a route allows, the connection manager's
two upgrade steps (the request's Upgrade fields, the 101), and the tunnel after it.

Envoy's model: an upgrade request is routed and forwarded like any request, with
its Upgrade and Connection headers kept; bytes the client sends after the head
wait until the upstream answers.  A 101 turns both connections into one byte
tunnel, which ends when either side closes (Envoy does not half-close an
upgraded HTTP/1 connection: a FIN from either side closes both) or when it has
been idle for the connection manager's stream_idle_timeout.  Any other answer is
an ordinary response, after which the connection closes.

A 101 makes a tunnel only when its own fields say so, as Envoy's codec decides
(Utility::isUpgrade: an Upgrade field and "upgrade" among the Connection
options).  Any other 101 is a final response without a body: it goes to the
client with Connection: close, the bytes the client sent after its head (its
request's body, to Envoy) go upstream, the upstream's bytes after the head are
dropped, and both connections close.

While a tunnel lives, its request is still active, as Envoy's stream is:
downstream_rq_active, the cluster's upstream_rq_active and the host's active
requests (LEAST_REQUEST, the max_requests circuit breaker) count it until it
closes.  The response class (downstream_rq_1xx, downstream_rq_completed) is
counted at the 101, as Envoy counts it at the response head.

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
from sidecar.codec.events import Headers, RequestHead, ResponseHead
from sidecar.codec.http1 import connection_tokens, serialize_response_head
from sidecar.http.message import Response
from sidecar.http.responding import add_date_server
from sidecar.timers import LazyDeadline

if TYPE_CHECKING:
    from sidecar.http.connection import HttpConnection
    from sidecar.http.message import Request


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
    # Envoy counts the upgrade once its route allows it, whatever the upstream answers.
    conn.stats.downstream_cx_upgrades_total += 1
    return upgrade_headers(head.headers)


def completes_upgrade(headers: Headers) -> bool:
    """Envoy's Utility::isUpgrade on a 101: an Upgrade field and the "upgrade" option."""
    return (any(name == "upgrade" for name, _ in headers)
            and "upgrade" in connection_tokens(headers))


class Switched:
    """What the router hands the connection manager with a 101 (``Response.upgraded``).

    ``upstream``: the Http1UpstreamConnection, out of its pool for good;
    ``from_upstream``: the bytes that came after the 101's head;  ``tunnel``: whether
    the 101 makes one;  ``release``: gives back the tunnel's upstream request's place in
    upstream_rq_active and the host's active requests.
    """

    __slots__ = ("upstream", "from_upstream", "tunnel", "release")

    def __init__(self, upstream: Any, from_upstream: bytes,
                 release: Callable[[], None] | None) -> None:
        self.upstream = upstream
        self.from_upstream = from_upstream
        self.tunnel = release is not None
        self.release = release

    def done(self) -> None:
        """The upstream request is over (the tunnel closed, or never opened)."""
        release, self.release = self.release, None
        if release is not None:
            release()


def switched_response(request: Request, head: ResponseHead, from_upstream: bytes, conn: Any,
                      host: Any, strip: frozenset[str] | set[str]) -> Response:
    """The router's Response for a 101 to an upgrade request (``strip``: the response
    fields the router drops; a tunnel's 101 keeps its Upgrade and Connection)."""
    request.info.response_code_details = "via_upstream"
    if not completes_upgrade(head.headers):
        # An ordinary response to Envoy: Upgrade and Connection are hop-by-hop fields
        # again, and what the upstream sent after the head is not read.
        response = Response(101, [h for h in head.headers if h[0] not in strip], b"")
        response.upgraded = Switched(conn, b"", None)
        return response
    headers = [h for h in head.headers
               if h[0] not in strip or h[0] == "upgrade" or h[0] == "connection"]
    # The upstream request lives on as the tunnel (Envoy's UpstreamRequest does): the
    # router lets go of the attempt's count when it returns, so hold one more here.
    stats = conn.pool.stats
    stats.upstream_rq_active += 1
    host.active_requests += 1

    def release() -> None:
        stats.upstream_rq_active -= 1
        host.active_requests -= 1

    response = Response(101, headers, b"")
    response.upgraded = Switched(conn, from_upstream, release)
    return response


def switch_protocols(conn: HttpConnection, request: Request, response: Response) -> None:
    """The upstream said 101: write it, then splice the two connections (or, for a 101
    that makes no tunnel, answer with it and close)."""
    switched: Switched = response.upgraded  # type: ignore[assignment]
    upstream = switched.upstream
    if conn.closing:
        upstream.abort()
        switched.done()
        return
    if not switched.tunnel:
        refuse_tunnel(conn, request, response, upstream)
        return
    add_date_server(response.headers, conn.ctx.config)
    head = serialize_response_head(101, response.headers)
    conn.transport.write(head)  # type: ignore[union-attr]
    stats = conn.stats
    stats.downstream_cx_tx_bytes_total += len(head)
    stats.count_class(101)      # at the head, as Envoy: the tunnel's end counts no class
    stats.downstream_cx_upgrades_active += 1

    def ended(flag: str) -> None:
        stats.downstream_cx_upgrades_active -= 1
        switched.done()
        request.info.set_flag(flag)
        conn.finish(request, 101, response.headers, False, True)

    held = conn.parser.take()
    tunnel = Tunnel(conn, upstream, request.info, stats, upstream.pool.stats,
                    conn.ctx.config.stream_idle_timeout, ended)
    tunnel.start(held, switched.from_upstream)


def refuse_tunnel(conn: HttpConnection, request: Request, response: Response,
                  upstream: Any) -> None:
    """A 101 without the fields of an upgrade, as Envoy 1.40: the 101 (Date, Server,
    Connection: close) is the request's answer and the client's connection closes after
    it; the bytes the client sent after its head, which Envoy reads as the request's
    body, go upstream before that connection closes too."""
    headers = response.headers
    add_date_server(headers, conn.ctx.config)
    headers.append(("connection", "close"))
    head = serialize_response_head(101, headers)
    conn.transport.write(head)  # type: ignore[union-attr]
    conn.stats.downstream_cx_tx_bytes_total += len(head)
    held = conn.parser.take()
    transport = upstream.transport
    if transport is not None and not transport.is_closing():
        if held:
            transport.write(held)
            upstream.pool.stats.upstream_cx_tx_bytes_total += len(held)
        upstream.close()        # after writing what it holds
    conn.finish(request, 101, headers, False)


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
        self.upstream.tunneled = True     # its close counts as one with an active request
        self._touch()
        # Both were counted as received on arrival: the client's held bytes by the
        # connection manager, the upstream's (in the read with the 101) by its connection.
        if from_upstream:
            self.carry(self.up, from_upstream, counted=True)
        if from_client:
            self.carry(self.down, from_client, counted=True)
        self.http.transport.resume_reading()

    def carry(self, source: _End, data: bytes, counted: bool = False) -> None:
        n = len(data)
        if source.downstream:
            if not counted:
                self.stats.downstream_cx_rx_bytes_total += n
                self.info.bytes_received += n
            self.cluster_stats.upstream_cx_tx_bytes_total += n
        else:
            if not counted:
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
        if flag != "UC":
            # The client's end, or the idle timeout: sidecar closes the upstream side (the
            # upstream's own close, "UC", is remote: cluster upstream_cx_destroy_remote).
            self.upstream.closed_locally()
        for transport in (self.http.transport, self.upstream.transport):
            if not transport.is_closing():
                transport.close()

    def lost(self, side: _End, exc: Exception | None) -> None:
        self.end("DC" if side.downstream else "UC")
        if side.downstream:
            self.http.connection_lost(exc)
        else:
            self.upstream.connection_lost(exc)
