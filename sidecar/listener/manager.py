"""Binds each configured listener and hands its connections to the listener's network filter."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from config import model
from filters.network.tcp_proxy.proxy import TcpProxyContext, TcpProxyDownstream
from sidecar.http.access_log import AccessLogs
from sidecar.http.codec_select import connection_factory
from sidecar.http.context import HcmContext
from sidecar.listener import own_addresses
from sidecar.listener.accept import AcceptStage, ListenerRuntime
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
    """Wraps the per-connection protocol factory with the listener's connection stats.

    ``count`` is False for listeners with an accept stage (accept.py): that stage counts
    the connection on the listener that finally takes it.
    """

    def __init__(self, make: Any, stats: ListenerStats, count: bool = True) -> None:
        self.make = make
        self.stats = stats
        self.count = count

    def __call__(self) -> asyncio.Protocol:
        if not self.count:
            return self.make()      # type: ignore[no-any-return]
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


Context = HcmContext | TcpProxyContext


class ActiveListener:
    """One listener (bound, or virtual with bind_to_port false) and its chains' contexts."""

    def __init__(self, config: model.Listener, context: Context,
                 server: asyncio.AbstractServer | None, sock: socket.socket | None,
                 factory: CountingProtocolFactory | None = None,
                 contexts: list[Context] | None = None,
                 runtime: ListenerRuntime | None = None) -> None:
        self.config = config
        self.context = context           # the (first) chain's: RDS updates reach it here
        self.contexts = contexts or [context]
        self.server = server
        self.socket = sock
        self.factory = factory
        self.runtime = runtime
        self.bound: tuple[str, int] | None = None     # registered in own_addresses

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1] if self.socket else self.config.address.port

    def close_server(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.bound is not None:
            own_addresses.remove(*self.bound)
            self.bound = None


def _addr_key(ip: str, port: int) -> tuple[str, int]:
    return str(ipaddress.ip_address(ip.split("%", 1)[0])), port


class ListenerManager:
    def __init__(self, stats: StatsStore, cluster_manager: Any, request_parser: type,
                 access_logs: AccessLogs | None = None) -> None:
        self.stats = stats
        self.cluster_manager = cluster_manager
        self.request_parser = request_parser
        self.listeners: dict[str, ActiveListener] = {}
        self.access_logs = access_logs or AccessLogs()
        # Contexts of replaced or removed listeners whose connections are finishing.
        self.draining: list[Context] = []
        # Listeners by configured address, for use_original_dst hand-offs.
        self.virtual: dict[tuple[str, int], ActiveListener] = {}

    def make_context(self, config: model.Listener, route_config: model.RouteConfig | None = None,
                     chain: model.FilterChain | None = None) -> Context:
        nf = (chain or config.filter_chain).filter
        limit = config.per_connection_buffer_limit_bytes
        if isinstance(nf, model.HttpConnectionManager):
            return HcmContext(nf, self.cluster_manager, self.stats.http_scope(nf.stat_prefix),
                              self.request_parser, limit, self.access_logs, route_config,
                              self.stats.http2_scope)
        return TcpProxyContext(nf, self.cluster_manager, self.stats.tcp_scope(nf.stat_prefix), limit)

    @staticmethod
    def connection_maker(context: Context) -> Any:
        if isinstance(context, HcmContext):
            return connection_factory(context)     # HTTP/1, HTTP/2 or either (codec_type)
        return lambda: TcpProxyDownstream(context)

    def build(self, config: model.Listener, route_config: model.RouteConfig | None,
              stats: ListenerStats) -> tuple[Context, list[Context], ListenerRuntime, Any]:
        """The chains' contexts, the accept stage runtime and the maker the listener's
        protocol factory calls (one plain chain: its network filter's, the fast path)."""
        context = self.make_context(config, route_config)
        contexts = [context]
        direct = self.connection_maker(context)
        makers = {id(config.filter_chain): direct}
        others = list(config.filter_chains)
        if config.default_filter_chain is not None:
            others.append(config.default_filter_chain)
        for chain in others:
            if id(chain) not in makers:
                ctx = self.make_context(config, route_config, chain)
                contexts.append(ctx)
                makers[id(chain)] = self.connection_maker(ctx)
        # Every listener has a runtime: use_original_dst may hand it a connection.  Only
        # those that need one run the accept stage on their own connections.
        runtime = ListenerRuntime(config, stats, makers, self.find_virtual, self.stats)
        if not config.needs_accept_stage:
            return context, contexts, runtime, direct
        return context, contexts, runtime, lambda: AcceptStage(runtime)

    def find_virtual(self, ip: str, port: int) -> ListenerRuntime | None:
        """use_original_dst: the listener on ip:port, else the one on 0.0.0.0:port (an IPv4
        address; or [::]:port with ipv4_compat) or [::]:port, as Envoy's
        getBalancedHandlerByAddress looks them up (bound listeners and bind_to_port: false
        ones alike)."""
        try:
            key = _addr_key(ip, port)
        except ValueError:
            return None
        active = self.virtual.get(key)
        if active is None:
            v4 = "." in key[0]
            active = self.virtual.get(("0.0.0.0", port)) if v4 else None
            if active is None:
                wild = self.virtual.get(("::", port))
                if wild is not None and (not v4 or wild.config.address.ipv4_compat):
                    active = wild
        return active.runtime if active is not None else None

    def _index(self) -> None:
        self.virtual = {_addr_key(a.config.address.address, a.config.address.port): a
                        for a in self.listeners.values() if a.runtime is not None}

    def listener_stats(self, config: model.Listener, bound: tuple[Any, ...] | None) -> ListenerStats:
        """listener.<stat_prefix or address>.*: Envoy names the address "10.0.0.1_80" and
        "[__1]_80" (its "[::1]:80" with ':' sanitized to '_')."""
        if config.stat_prefix:
            return self.stats.listener_scope(config.stat_prefix)
        ip, port = (config.address.address, config.address.port) if bound is None else bound[:2]
        text = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return self.stats.listener_scope(text.replace(":", "_"))

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
            context, contexts, runtime, make = self.build(config, route_config, old.factory.stats)
            old.factory.make = make
            old.factory.count = not config.needs_accept_stage
            active = ActiveListener(config, context, old.server, old.socket, old.factory,
                                    contexts, runtime)
            active.bound, old.bound = old.bound, None
            self.listeners[config.name] = active
        else:
            active = await self.add(config, route_config)
            if old is not None:
                old.close_server()
        if old is not None:
            for context in old.contexts:
                self._retire(context)
        self._index()
        return active

    def remove(self, name: str) -> None:
        """Stop accepting on a listener (LDS removal); its connections drain."""
        old = self.listeners.pop(name, None)
        if old is not None:
            old.close_server()
            for context in old.contexts:
                self._retire(context)
        self._index()

    def _retire(self, context: Context) -> None:
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
        server = sock = factory = None
        bound = None
        if config.bind_to_port:
            a = config.address
            try:
                sock = bind_socket(a)
            except OSError as e:
                raise OSError(e.errno, f"listener {config.name!r}: cannot bind {a.address}:{a.port}: "
                              f"{e.strerror}") from None
            bound = sock.getsockname()
        stats = self.listener_stats(config, bound)
        context, contexts, runtime, make = self.build(config, route_config, stats)
        if sock is not None and bound is not None:
            factory = CountingProtocolFactory(make, stats, count=not config.needs_accept_stage)
            try:
                server = await loop.create_server(factory, sock=sock, backlog=1024)
            except BaseException:
                sock.close()
                raise
            log.info("listener %s bound to %s:%s", config.name, bound[0], bound[1])
        active = ActiveListener(config, context, server, sock, factory, contexts, runtime)
        if bound is not None:
            active.bound = (bound[0], bound[1])
            own_addresses.add(bound[0], bound[1])
        self.listeners[config.name] = active
        self._index()
        return active

    def stop_accepting(self) -> None:
        for active in self.listeners.values():
            active.close_server()

    def drain(self) -> None:
        for active in self.listeners.values():
            for context in active.contexts:
                context.drain()
        for context in self.draining:
            context.drain()

    def open_connections(self) -> int:
        return (sum(len(c.connections) for a in self.listeners.values() for c in a.contexts)
                + sum(len(c.connections) for c in self.draining))
