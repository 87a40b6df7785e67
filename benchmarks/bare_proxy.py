"""The floor: the least a uvloop + httptools HTTP/1.1 proxy can do per request.

    python benchmarks/bare_proxy.py --listen 8000 --upstream 127.0.0.1:8080

Not a product and not used by the proxy: a yardstick for bench_http1.py's "http"
scenario.  Per downstream connection it keeps one upstream connection, parses each
request head with httptools just far enough to find its end (bodyless GETs only),
forwards the bytes untouched, and copies the response back once httptools says it
is complete.  No routing, no header work, no stats, no timeouts: whatever sidecar
spends above this is the price of its features; whatever this spends (user and
system CPU) is what any Python proxy on uvloop pays on this machine.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.downstream.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.close()


class Downstream(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        for data in self.pending:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def main(listen: int, upstream: str) -> None:
    host, port = upstream.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(host, int(port)), "127.0.0.1", listen)
    print(f"listening 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=int, default=8000)
    p.add_argument("--upstream", required=True, help="host:port of benchmarks/upstream.py")
    args = p.parse_args()
    uvloop.run(main(args.listen, args.upstream))
