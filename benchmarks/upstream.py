"""A fast local upstream for benchmarks: HTTP/1.1 "ok" server or raw TCP echo.

    python benchmarks/upstream.py --port 8080             # HTTP/1.1, 200 "ok\\n"
    python benchmarks/upstream.py --port 8081 --echo-tcp  # echoes bytes back

It has to cost as little CPU as possible, so that what a benchmark measures is
the proxy: uvloop, httptools, one asyncio.Protocol per connection, and one
write() per read() even when the client pipelines requests (every response
parsed out of one chunk of input is joined into a single write).

With --port 0 the kernel picks the port. Either way the server prints one
line, "listening HOST:PORT", on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast

import httptools
import uvloop

BODY = b"ok\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/plain\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
# Sent instead of RESPONSE for the last response on a connection the client
# asked to close (HTTP/1.0 without keep-alive, or "connection: close").
RESPONSE_CLOSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"content-length: 0\r\n"
    b"connection: close\r\n"
    b"\r\n"
)


class HttpProtocol(asyncio.Protocol):
    """Answers every request with RESPONSE; keep-alive and pipelining."""

    __slots__ = ("transport", "parser", "out", "closing", "paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.closing = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: cast.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callback: a whole request (head + body) has been parsed.
    def on_message_complete(self) -> None:
        if self.closing:
            return
        if self.parser.should_keep_alive():
            self.out.append(RESPONSE)
        else:
            self.out.append(RESPONSE_CLOSE)
            self.closing = True

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # no upgrades here: answer what we have, close
        except httptools.HttpParserError:
            self.out.append(BAD_REQUEST)
            self.closing = True
        out = self.out
        if out:
            # One syscall for everything this chunk produced (pipelining).
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.closing:
            transport.close()

    # Flow control: a client that does not read stops us reading from it.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class EchoProtocol(asyncio.Protocol):
    """Writes back every byte it receives; closes when the peer closes."""

    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: cast.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        # Returning False closes our side too. No write_eof(): see the uvloop
        # half-close note in /work/shared/ENVOY-NOTES.md.
        return False

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


async def serve(host: str, port: int, echo: bool, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    factory = EchoProtocol if echo else HttpProtocol
    server = await loop.create_server(
        factory, host, port, backlog=backlog, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port")
    parser.add_argument("--echo-tcp", action="store_true", help="raw TCP echo instead of HTTP")
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.echo_tcp, args.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
