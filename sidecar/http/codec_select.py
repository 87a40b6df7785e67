"""Which connection manager serves a downstream connection: codec_type HTTP1, HTTP2 or AUTO.

AUTO is Envoy's: the first bytes read decide.  A connection whose first read
starts with the HTTP/2 client preface ("PRI * HTTP/2", RFC 9113 3.4: prior
knowledge h2c) is HTTP/2, anything else HTTP/1.1 (as Envoy, a preface split
before those 12 bytes is not waited for).  Until those bytes arrive a small
sniffer is the transport's protocol; it then hands the transport (and the
bytes) to the chosen connection manager with ``set_protocol``, so neither
manager pays anything per request for the choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sidecar.http.connection import HttpConnection
from sidecar.http.connection_h2 import Http2Connection
from sidecar.http.context import HcmContext
from sidecar.timers import LazyDeadline

# What Envoy looks for (Http2::CLIENT_MAGIC_PREFIX): the start of the preface.
MAGIC = b"PRI * HTTP/2"


def connection_factory(context: HcmContext) -> Callable[[], asyncio.Protocol]:
    codec = context.config.codec_type
    if codec == "HTTP2":
        return lambda: Http2Connection(context)
    if codec == "HTTP1":
        return lambda: HttpConnection(context)
    return lambda: CodecSniffer(context)


class CodecSniffer(asyncio.Protocol):
    """Holds a new AUTO connection until its first bytes show which protocol it speaks."""

    def __init__(self, ctx: HcmContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.chosen: Any = None
        self.idle = LazyDeadline(ctx.loop, self._idle_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ctx.connections.add(self)          # so draining closes it
        timeout = self.ctx.config.idle_timeout
        if timeout is not None:
            self.idle.set(self.ctx.loop.time() + timeout)

    def data_received(self, data: bytes) -> None:
        self._choose(Http2Connection(self.ctx) if data.startswith(MAGIC)
                     else HttpConnection(self.ctx), data)

    def eof_received(self) -> bool:
        return False

    def _choose(self, conn: Any, data: bytes) -> None:
        self.idle.cancel()
        self.ctx.connections.discard(self)
        self.chosen = conn
        transport = self.transport
        assert transport is not None
        # The listener's accounting wraps connection_lost on the protocol object it
        # made (this sniffer): the chosen connection must end through that wrapper,
        # which calls our connection_lost, which forwards to the connection's own.
        wrapper = self.__dict__.get("connection_lost")
        if wrapper is not None:
            conn.connection_lost = wrapper
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        chosen = self.chosen
        if chosen is not None:
            type(chosen).connection_lost(chosen, exc)
            return
        # Gone before saying anything: counted as an HTTP connection that ended.
        self.idle.cancel()
        self.ctx.connections.discard(self)
        stats = self.ctx.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_destroy += 1

    def _idle_timeout(self) -> None:
        if self.chosen is None and self.transport is not None:
            self.ctx.stats.downstream_cx_idle_timeout += 1
            self.transport.close()

    def drain(self) -> None:
        if self.chosen is None and self.transport is not None:
            self.transport.close()
