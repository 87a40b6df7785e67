"""A real HTTP/1.1 upstream for tests: its own thread and event loop, h11 framing, records what it got.

Each request is handed to ``handler(request) -> Reply``; the default echoes
the request line.  ``requests`` and ``connections`` let tests see exactly
what crossed the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from tests.support.threaded_server import ThreadedServer


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection_id: int

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0           # seconds before answering
    # Send the body in these pieces: chunked, unless a content-length header is given.
    chunks: list[bytes] | None = None
    close: bool = False          # close the connection after the response
    reset: bool = False          # abort the connection instead of answering
    reason: str = ""             # reason phrase ("" = h11's default)
    chunk_delay: float = 0.0     # seconds between body pieces (a trickling body)


def echo_handler(request: Received) -> Reply:
    return Reply(200, [("content-type", "text/plain")],
                 f"{request.method} {request.target}".encode())


class Upstream(ThreadedServer):
    def __init__(self, handler: Callable[[Received], Reply] = echo_handler,
                 host: str = "127.0.0.1", read_delay: float = 0.0) -> None:
        super().__init__(host)
        self.handler = handler
        self.read_delay = read_delay      # seconds to sleep between body reads (a slow reader)
        self.requests: list[Received] = []
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.SEND_BODY:
                        if conn.their_state is h11.IDLE:
                            break
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
                if not isinstance(event, h11.Request):
                    continue
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        if self.read_delay:
                            await asyncio.sleep(self.read_delay)
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                received = Received(event.method.decode(), event.target.decode(),
                                    [(k.decode(), v.decode()) for k, v in event.headers],
                                    body, conn_id)
                self.requests.append(received)
                reply = self.handler(received)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.reset:
                    writer.transport.abort()
                    return
                headers = list(reply.headers)
                if reply.chunks is None and not any(k.lower() == "content-length" for k, _ in headers):
                    headers.append(("content-length", str(len(reply.body))))
                if reply.chunks is not None and not any(k.lower() == "content-length"
                                                        for k, _ in headers):
                    headers.append(("transfer-encoding", "chunked"))
                if reply.close:
                    headers.append(("connection", "close"))
                writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers,
                                                    reason=reply.reason.encode())))
                if received.method != "HEAD":
                    for piece in reply.chunks if reply.chunks is not None else [reply.body]:
                        if piece:
                            writer.write(conn.send(h11.Data(data=piece)))
                            if reply.chunk_delay:
                                await writer.drain()
                                await asyncio.sleep(reply.chunk_delay)
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or reply.close:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()
