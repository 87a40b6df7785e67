"""Binds each configured listener and hands its connections to the listener's network filter."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from config import model
from filters.network.tcp_proxy.proxy import TcpProxyContext, TcpProxyDownstream
from sidecar.http.access_log import AccessLogs
from sidecar.http.connection import HttpConnection
from sidecar.http.context import HcmContext
from sidecar.stats import ListenerStats, StatsStore

log = logging.getLogger(__name__)


def bind_socket(address: model.SocketAddress) -> socket.socket:
    """A listening socket as Envoy makes it: SO_REUSEADDR; IPv6 is v6-only unless ipv4_compat."""
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address.ipv4_compat else 1)
        sock.bind((address.address, address.port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class CountingProtocolFactory:
    """Wraps the per-connection protocol factory with the listener's connection stats."""

    def __init__(self, make: Any, stats: ListenerStats) -> None:
        self.make = make
        self.stats = stats

    def __call__(self) -> asyncio.Protocol:
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        protocol = self.make()
        original_lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            stats.downstream_cx_active -= 1
            stats.downstream_cx_destroy += 1
            original_lost(exc)

        protocol.connection_lost = connection_lost
        return protocol


class ActiveListener:
    """One bound listener and the network filter context its connections use."""

    def __init__(self, config: model.Listener, context: HcmContext | TcpProxyContext,
                 server: asyncio.AbstractServer | None, sock: socket.socket | None,
                 factory: CountingProtocolFactory | None = None) -> None:
        self.config = config
        self.context = context
        self.server = server
        self.socket = sock
        self.factory = factory

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1] if self.socket else self.config.address.port


class ListenerManager:
    def __init__(self, stats: StatsStore, cluster_manager: Any, request_parser: type,
                 access_logs: AccessLogs | None = None) -> None:
        self.stats = stats
        self.cluster_manager = cluster_manager
        self.request_parser = request_parser
        self.listeners: dict[str, ActiveListener] = {}
        self.access_logs = access_logs or AccessLogs()
        # Contexts of replaced or removed listeners whose connections are finishing.
        self.draining: list[HcmContext | TcpProxyContext] = []

    def make_context(self, config: model.Listener, route_config: model.RouteConfig | None = None
                     ) -> HcmContext | TcpProxyContext:
        nf = config.filter_chain.filter
        limit = config.per_connection_buffer_limit_bytes
        if isinstance(nf, model.HttpConnectionManager):
            return HcmContext(nf, self.cluster_manager, self.stats.http_scope(nf.stat_prefix),
                              self.request_parser, limit, self.access_logs, route_config)
        return TcpProxyContext(nf, self.cluster_manager, self.stats.tcp_scope(nf.stat_prefix), limit)

    @staticmethod
    def connection_maker(context: HcmContext | TcpProxyContext) -> Any:
        if isinstance(context, HcmContext):
            return lambda: HttpConnection(context)
        return lambda: TcpProxyDownstream(context)

    async def put(self, config: model.Listener, route_config: model.RouteConfig | None = None
                  ) -> ActiveListener:
        """Add a listener, or replace the one of that name (LDS).

        A replaced listener on the same address keeps its socket: new
        connections get the new config at once, while the old config's
        connections drain (they finish what they are doing, then close), as
        Envoy drains a listener on update.  Raises OSError when a bind fails.
        """
        old = self.listeners.get(config.name)
        if old is not None and old.factory is not None and old.config.address == config.address \
                and config.bind_to_port:
            context = self.make_context(config, route_config)
            old.factory.make = self.connection_maker(context)
            active = ActiveListener(config, context, old.server, old.socket, old.factory)
            self.listeners[config.name] = active
        else:
            active = await self.add(config, route_config)
            if old is not None and old.server is not None:
                old.server.close()
        if old is not None:
            self._retire(old.context)
        return active

    def remove(self, name: str) -> None:
        """Stop accepting on a listener (LDS removal); its connections drain."""
        old = self.listeners.pop(name, None)
        if old is not None:
            if old.server is not None:
                old.server.close()
            self._retire(old.context)

    def _retire(self, context: HcmContext | TcpProxyContext) -> None:
        self.draining = [c for c in self.draining if c.connections]
        if isinstance(context, HcmContext):
            context.drain()     # each connection closes after its current response
        # tcp_proxy connections have no request boundary: they run on until they end
        # (or until shutdown drains them).
        if context.connections:
            self.draining.append(context)

    async def add(self, config: model.Listener, route_config: model.RouteConfig | None = None
                  ) -> ActiveListener:
        """Bind and start accepting; raises OSError naming the address when the bind fails."""
        loop = asyncio.get_running_loop()
        context = self.make_context(config, route_config)
        make = self.connection_maker(context)
        server = sock = factory = None
        if config.bind_to_port:
            a = config.address
            try:
                sock = bind_socket(a)
            except OSError as e:
                raise OSError(e.errno, f"listener {config.name!r}: cannot bind {a.address}:{a.port}: "
                              f"{e.strerror}") from None
            bound = sock.getsockname()
            name = f"{bound[0]}_{bound[1]}" if not config.stat_prefix else config.stat_prefix
            factory = CountingProtocolFactory(make, self.stats.listener_scope(name))
            server = await loop.create_server(factory, sock=sock, backlog=1024)
            log.info("listener %s bound to %s:%s", config.name, bound[0], bound[1])
        active = ActiveListener(config, context, server, sock, factory)
        self.listeners[config.name] = active
        return active

    def stop_accepting(self) -> None:
        for active in self.listeners.values():
            if active.server is not None:
                active.server.close()

    def drain(self) -> None:
        for active in self.listeners.values():
            active.context.drain()
        for context in self.draining:
            context.drain()

    def open_connections(self) -> int:
        return (sum(len(a.context.connections) for a in self.listeners.values())
                + sum(len(c.connections) for c in self.draining))
