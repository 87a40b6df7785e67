"""A new connection's way to its filter chain: listener filters, use_original_dst hand-off,
filter chain matching (Envoy's ActiveTcpSocket).

Only listeners with listener filters, several filter chains (or a default chain) or
use_original_dst come here; a plain one-chain listener hands its connections straight to
the network filter (manager.py), with no per-connection work added.

The stage is the transport's first protocol.  Bytes the inspectors read are replayed to the
chosen chain's protocol unchanged (``data_received``), then the transport is switched over
(``set_protocol``).  The connection is counted (downstream_cx_total / active / destroy) on
the listener that finally takes it, as Envoy counts a handed-off connection on the
listener it was handed to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from config import model
from filters.listener import http_inspector, tls_inspector
from filters.listener.original_dst import original_dst
from sidecar.listener.chain_match import ConnectionFacts, ip_of, select_chain
from sidecar.listener.inspector_stats import HttpInspectorStats, TlsInspectorStats
from sidecar.stats import ListenerStats

log = logging.getLogger(__name__)

_DELEGATED = ("write", "writelines", "write_eof", "can_write_eof", "close", "abort", "is_closing",
              "pause_reading", "resume_reading", "is_reading", "set_write_buffer_limits",
              "get_write_buffer_size", "get_write_buffer_limits", "set_protocol", "get_protocol")


class RestoredTransport(asyncio.Transport):
    """The accepted transport with the original destination as its local address.

    Envoy's original_dst filter restores the connection's local address: access logs,
    ORIGINAL_DST clusters and the HTTP connection all see the address the client dialled.
    The transport's methods are bound once here (instance attributes shadow the base
    class's), so writes cost what they cost unwrapped.  A Transport subclass, so compiled
    (mypyc) protocols that type their transport accept it.
    """

    def __init__(self, transport: asyncio.Transport, sockname: tuple[Any, ...]) -> None:
        super().__init__()
        self.transport = transport
        self.sockname = sockname
        for name in _DELEGATED:
            setattr(self, name, getattr(transport, name))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.sockname
        return self.transport.get_extra_info(name, default)


class ListenerRuntime:
    """What the accept stage needs of one listener (one config version)."""

    def __init__(self, config: model.Listener, stats: ListenerStats,
                 makers: dict[int, Callable[[], asyncio.Protocol]],
                 find_virtual: Callable[[str, int], ListenerRuntime | None],
                 store: Any = None) -> None:
        self.config = config
        self.stats = stats
        self.makers = makers                 # id(chain) -> its network filter's protocol maker
        self.find_virtual = find_virtual     # use_original_dst: the listener for an address
        filters = config.listener_filters
        self.original_dst = next((f for f in filters if f.kind == "original_dst"), None)
        # The inspectors in configured order (they may need to wait for bytes).
        self.inspectors = tuple(f for f in filters if f.kind in ("tls_inspector", "http_inspector"))
        kinds = {f.kind for f in filters}
        self.tls_stats = (store.root_scope(TlsInspectorStats)
                          if store is not None and "tls_inspector" in kinds else None)
        self.http_stats = (store.root_scope(HttpInspectorStats)
                           if store is not None and "http_inspector" in kinds else None)

    def choose(self, facts: ConnectionFacts) -> model.FilterChain | None:
        config = self.config
        if config.filter_chains:
            return select_chain(config.filter_chains, config.default_filter_chain, facts)
        return config.filter_chain


class AcceptStage(asyncio.Protocol):
    """One connection from accept until its filter chain takes it."""

    def __init__(self, runtime: ListenerRuntime) -> None:
        self.runtime = runtime
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.eof = False
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.restored: tuple[Any, ...] | None = None
        self.facts: ConnectionFacts | None = None
        self.inspectors: tuple[str, ...] = ()  # the inspectors this connection runs
        self.step = 0                         # the inspector running
        self.pre_stats: ListenerStats | None = None

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]
        local = t.get_extra_info("sockname")
        peer = t.get_extra_info("peername")
        rt = self.runtime
        if not local or not peer:          # already reset by the peer
            self.done = True
            t.close()
            return
        od = rt.original_dst
        if od is not None and not (od.disabled and disabled(od.disabled, local[1])):
            dst = original_dst(t.get_extra_info("socket"))
            if dst is not None:
                self.restored = dst if ":" not in dst[0] else (dst[0], dst[1], 0, 0)
                if rt.config.use_original_dst:
                    target = rt.find_virtual(dst[0], dst[1])
                    if target is not None and target is not rt:
                        self.runtime = rt = target     # its listener filters run too (as Envoy)
        dest = self.restored or local
        self.facts = ConnectionFacts(ip_of(dest[0]), dest[1], ip_of(peer[0]), peer[1])
        # filter_disabled is decided on the (restored) destination port, as Envoy.
        self.inspectors = tuple(f.kind for f in rt.inspectors
                                if not (f.disabled and disabled(f.disabled, dest[1])))
        if not self.inspectors:
            self.finish()
            return
        self.pre_stats = rt.stats
        rt.stats.downstream_pre_cx_active += 1
        timeout = rt.config.listener_filters_timeout
        if timeout is not None:
            self.timer = asyncio.get_running_loop().call_later(timeout, self.on_timeout)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        self.inspect()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.done:
            # Envoy closes a connection whose peer ends it while listener filters wait.
            self.runtime.stats.downstream_listener_filter_remote_close += 1
            self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.close()

    # --- listener filters -------------------------------------------------------------

    def inspect(self) -> None:
        facts = self.facts
        assert facts is not None
        while self.step < len(self.inspectors):
            kind = self.inspectors[self.step]
            if kind == "tls_inspector":
                done, hello = tls_inspector.inspect(self.buffer, self.eof)
                if not done:
                    return
                if hello is tls_inspector.TOO_LARGE:
                    if self.runtime.tls_stats is not None:
                        self.runtime.tls_stats.client_hello_too_large += 1
                    self.close()
                    return
                if hello is not None:
                    facts.transport_protocol = "tls"
                    facts.server_name = hello.server_name
                    facts.application_protocols = hello.alpn
                count_tls(self.runtime.tls_stats, hello)
            elif facts.transport_protocol != "tls":       # http_inspector skips TLS
                done, proto = http_inspector.inspect(self.buffer, self.eof)
                if not done:
                    return
                if proto:
                    facts.application_protocols = (proto,)
                count_http(self.runtime.http_stats, proto)
            self.step += 1
        self.finish()

    def on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        rt = self.runtime
        rt.stats.downstream_pre_cx_timeout += 1
        if rt.config.continue_on_listener_filters_timeout:
            self.finish()
        else:
            self.close()

    # --- the hand-over ----------------------------------------------------------------

    def _end_pre(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pre_stats is not None:
            self.pre_stats.downstream_pre_cx_active -= 1
            self.pre_stats = None

    def close(self) -> None:
        """Close before a chain took the connection.  Envoy only peeks while inspecting, so
        bytes the peer sent are still unread when it closes: the kernel answers with a
        reset.  Having read them, we reset explicitly (SO_LINGER 0) to look the same."""
        self._end_pre()
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.buffer:
            sock = t.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, AttributeError):
                pass
            t.abort()
        else:
            t.close()

    def finish(self) -> None:
        """Choose the filter chain and hand the connection (and the bytes read) to it."""
        self._end_pre()
        rt = self.runtime
        transport = self.transport
        assert transport is not None and self.facts is not None
        chain = rt.choose(self.facts)
        if chain is None:
            rt.stats.no_filter_chain_match += 1
            log.debug("listener %s: no filter chain matches %s", rt.config.name, self.facts)
            self.close()
            return
        protocol = rt.makers[id(chain)]()
        stats = rt.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        original_lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            stats.downstream_cx_active -= 1
            stats.downstream_cx_destroy += 1
            original_lost(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        t: Any = transport
        if self.restored is not None and self.restored != transport.get_extra_info("sockname"):
            t = RestoredTransport(transport, self.restored)
        transport.set_protocol(protocol)
        protocol.connection_made(t)
        if self.buffer:
            data, self.buffer = self.buffer, b""
            protocol.data_received(data)
        if self.eof and not transport.is_closing() and not protocol.eof_received():
            transport.close()


def disabled(p: model.ListenerFilterPredicate, port: int) -> bool:
    """Whether a filter_disabled predicate holds for a connection to ``port``."""
    kind = p.kind
    if kind == "port":
        return p.port_start <= port < p.port_end
    if kind == "any":
        return True
    if kind == "not":
        return not disabled(p.children[0], port)
    if kind == "and":
        return all(disabled(c, port) for c in p.children)
    return any(disabled(c, port) for c in p.children)


def count_tls(stats: Any, hello: tls_inspector.ClientHello | None) -> None:
    if stats is None:
        return
    if hello is None:
        stats.tls_not_found += 1
        return
    stats.tls_found += 1
    if hello.server_name:
        stats.sni_found += 1
    else:
        stats.sni_not_found += 1
    if hello.alpn:
        stats.alpn_found += 1
    else:
        stats.alpn_not_found += 1


_HTTP_FOUND = {"http/1.1": "http11_found", "http/1.0": "http10_found", "h2c": "http2_found"}


def count_http(stats: Any, proto: str) -> None:
    if stats is not None:
        name = _HTTP_FOUND.get(proto, "http_not_found")
        setattr(stats, name, getattr(stats, name) + 1)
