"""TCP proxying: bytes both ways with backpressure, half-close in each direction, idle timeout.

The downstream connection is held (not read) until the upstream connects, so
nothing is buffered for a connection that fails; then each side's writes
above the watermark pause the other side's reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from config import model
from sidecar.listener.half_close import shutdown_write
from sidecar.stats import TcpStats
from sidecar.timers import LazyDeadline

log = logging.getLogger(__name__)


class TcpProxyContext:
    """Shared by every connection of one tcp_proxy filter chain (one config version)."""

    def __init__(self, config: model.TcpProxy, cluster_manager: Any, stats: TcpStats,
                 buffer_limit: int) -> None:
        self.config = config
        self.cluster_manager = cluster_manager
        self.stats = stats
        self.buffer_limit = buffer_limit
        self.loop = asyncio.get_running_loop()
        self.connections: set[TcpProxyDownstream] = set()

    def pick_cluster(self) -> str:
        if self.config.cluster:
            return self.config.cluster
        total = sum(w for _, w in self.config.weighted_clusters)
        pick = random.randrange(total)
        for name, weight in self.config.weighted_clusters:
            pick -= weight
            if pick < 0:
                return name
        return self.config.weighted_clusters[-1][0]

    def drain(self) -> None:
        """On shutdown: a byte stream has no request boundary to wait for, so close now."""
        for conn in list(self.connections):
            conn.close()


class _Side(asyncio.Protocol):
    """One end of the proxied pair; ``peer`` is the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.read_eof = False        # this side sent FIN
        self.write_eof = False       # we sent FIN to this side
        self.eof_pending = False     # FIN to send once our write buffer drains
        self.closed = False

    def half_close(self) -> None:
        """Forward the other side's FIN once everything before it is written."""
        if self.closed or self.write_eof:
            return
        if shutdown_write(self.transport):  # type: ignore[arg-type]
            self.write_eof = True
            self.eof_pending = False
            self.owner.maybe_finish()
        else:
            # Ask for resume_writing() when the buffer is empty, then retry.
            self.eof_pending = True
            self.transport.set_write_buffer_limits(high=0, low=0)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.eof_pending:
            self.half_close()
            return
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            if not self.peer.read_eof:
                self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.read_eof = True
        if self.peer is not None:
            self.peer.half_close()
        self.owner.maybe_finish()
        return True     # keep our write side open: the other direction may still flow

    @property
    def owner(self) -> TcpProxyDownstream:
        raise NotImplementedError


class TcpProxyUpstream(_Side):
    def __init__(self, downstream: TcpProxyDownstream) -> None:
        super().__init__()
        self.downstream = downstream
        self.peer = downstream

    @property
    def owner(self) -> TcpProxyDownstream:
        return self.downstream

    def data_received(self, data: bytes) -> None:
        # The hot path of tcp_proxy: count, note activity, forward.
        down = self.downstream
        n = len(data)
        down.cluster_stats.upstream_cx_rx_bytes_total += n
        down.tcp_stats.downstream_cx_tx_bytes_total += n
        if down.idle_timeout is not None:
            down.idle.set(down.loop_time() + down.idle_timeout)
        if not down.closed:
            down.transport.write(data)  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(self.downstream.ctx.buffer_limit)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.downstream.cluster_stats.upstream_cx_active -= 1
        self.downstream.cluster_stats.upstream_cx_destroy += 1
        self.downstream.close()


class TcpProxyDownstream(_Side):
    def __init__(self, ctx: TcpProxyContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.upstream: TcpProxyUpstream | None = None
        self.cluster_stats: Any = None
        self.connect_task: asyncio.Task[None] | None = None
        self.idle = LazyDeadline(ctx.loop, self._idle_timeout)
        self.idle_timeout = ctx.config.idle_timeout
        self.loop_time = ctx.loop.time
        self.tcp_stats = ctx.stats
        # Bytes that arrived before the upstream connected: uvloop may deliver the
        # first read even though connection_made paused reading.  At most a read's worth.
        self.early: list[bytes] = []

    @property
    def owner(self) -> TcpProxyDownstream:
        return self

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self.forward(data)

    def forward(self, data: bytes) -> None:
        n = len(data)
        self.tcp_stats.downstream_cx_rx_bytes_total += n
        self.cluster_stats.upstream_cx_tx_bytes_total += n
        if self.idle_timeout is not None:
            self.idle.set(self.loop_time() + self.idle_timeout)
        up = self.upstream
        if not up.closed:  # type: ignore[union-attr]
            up.transport.write(data)  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(self.ctx.buffer_limit)  # type: ignore[attr-defined]
        transport.pause_reading()  # type: ignore[attr-defined]
        self.ctx.stats.downstream_cx_total += 1
        self.ctx.connections.add(self)
        self.connect_task = self.ctx.loop.create_task(self._connect())

    async def _connect(self) -> None:
        ctx = self.ctx
        name = ctx.pick_cluster()
        cluster = ctx.cluster_manager.get(name)
        if cluster is None:
            ctx.stats.downstream_cx_no_route += 1
            self.close()
            return
        self.cluster_stats = stats = cluster.stats
        od = cluster.original_dst
        # ORIGINAL_DST: the host is the connection's original destination (its local address
        # as the original_dst listener filter restored it).
        host = cluster.choose_host() if od is None else od.host_for(
            self.transport.get_extra_info("sockname"))  # type: ignore[union-attr]
        if host is None:
            stats.upstream_cx_none_healthy += 1
            self.close()
            return
        if stats.upstream_cx_active + cluster.connecting >= cluster.max_connections:
            # The max_connections circuit breaker: Envoy refuses the connection.
            stats.upstream_cx_overflow += 1
            self.close()
            return
        stats.upstream_cx_total += 1
        cluster.connecting += 1
        try:
            async with asyncio.timeout(cluster.config.connect_timeout):
                bind = cluster.config.upstream_bind_address
                _, upstream = await ctx.loop.create_connection(
                    lambda: TcpProxyUpstream(self), host.address, host.port,
                    local_addr=(bind, 0) if bind is not None else None)
        except (OSError, TimeoutError) as e:
            stats.upstream_cx_connect_fail += 1
            if isinstance(e, TimeoutError):
                stats.upstream_cx_connect_timeout += 1
            log.debug("tcp_proxy %s: connect to %s failed: %r", ctx.config.stat_prefix, host.label, e)
            if host.outlier is not None:      # outlier detection, as Envoy's tcp_proxy reports it
                host.outlier.put_connect_result("UT" if isinstance(e, TimeoutError) else "UF")
            self.close()
            return
        finally:
            cluster.connecting -= 1
        stats.upstream_cx_active += 1
        if host.outlier is not None:
            host.outlier.put_connect_result("")
        if self.closed:
            upstream.transport.close()  # type: ignore[union-attr]
            return
        self.upstream = upstream
        self.peer = upstream
        for data in self.early:
            self.forward(data)
        self.early.clear()
        if self.read_eof:
            upstream.half_close()
        else:
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.touch()

    def eof_received(self) -> bool:
        if self.upstream is None:
            self.read_eof = True
            return True   # the FIN is forwarded once the upstream connects
        return super().eof_received()

    def maybe_finish(self) -> None:
        """Both directions have ended: close both connections."""
        up = self.upstream
        if up is None:
            return
        if self.read_eof and up.write_eof and up.read_eof and self.write_eof:
            self.close()

    def touch(self) -> None:
        if self.idle_timeout is not None:
            self.idle.set(self.loop_time() + self.idle_timeout)

    def _idle_timeout(self) -> None:
        if not self.closed:
            self.ctx.stats.idle_timeout += 1
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]
        up = self.upstream
        if up is not None and not up.closed:
            up.closed = True
            up.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        self.idle.cancel()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        up = self.upstream
        if up is not None and not up.closed:
            up.closed = True
            up.transport.close()  # type: ignore[union-attr]
