"""An upstream that speaks HTTP/1.1 and h2c (prior knowledge) on one port, for tests of
clusters whose upstream protocol follows the downstream one (use_downstream_protocol_config).

Each connection is told apart by its first bytes, as Envoy's codec AUTO does: the
HTTP/2 connection preface (RFC 9113 3.4) goes to an H2Upstream, anything else to an
Upstream.  ``http1.requests`` and ``http2.requests`` say which protocol each request
came in on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.support.h2_upstream import H2Received, H2Reply, H2Upstream, echo
from tests.support.threaded_server import ThreadedServer
from tests.support.upstream import Received, Reply, Upstream, echo_handler

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class DualUpstream(ThreadedServer):
    def __init__(self, http1: Callable[[Received], Reply] = echo_handler,
                 http2: Callable[[H2Received], H2Reply] = echo) -> None:
        super().__init__()
        # Never started themselves: this server hands them its connections.
        self.http1 = Upstream(http1)
        self.http2 = H2Upstream(http2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = b""
        while len(first) < len(PREFACE) and PREFACE.startswith(first):
            data = await reader.read(len(PREFACE) - len(first))
            if not data:
                break
            first += data
        server: ThreadedServer = self.http2 if first == PREFACE else self.http1
        # The chosen server reads the connection from its first byte again.
        replay = asyncio.StreamReader()
        replay.feed_data(first)
        pump = asyncio.ensure_future(_pump(reader, replay))
        try:
            await server._serve(replay, writer)
        finally:
            pump.cancel()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamReader) -> None:
    while True:
        data = await source.read(65536)
        if not data:
            sink.feed_eof()
            return
        sink.feed_data(data)
