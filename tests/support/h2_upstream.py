"""A real HTTP/2 (h2c, prior knowledge) upstream for tests: its own thread and event loop,
the h2 library's server side, scripted per request.

``handler(request) -> H2Reply`` decides each answer: headers, body chunks, trailers,
a delay, a RST_STREAM (instead of the answer, or after its body began), or a GOAWAY.  ``requests``, ``connections`` and ``resets``
(stream ids the client reset) let tests see what crossed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events

from tests.support.threaded_server import ThreadedServer


@dataclass
class H2Received:
    headers: list[tuple[str, str]]
    body: bytes
    connection_id: int
    stream_id: int

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def path(self) -> str:
        return self.header(":path") or ""


@dataclass
class H2Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] | None = None
    delay: float = 0.0             # before answering
    reset: int | None = None       # answer with RST_STREAM(this error code) instead
    goaway: bool = False           # send GOAWAY (last stream id: this one) after answering
    chunk_delay: float = 0.0       # seconds between body chunks (a trickling body)
    reset_after: int | None = None  # RST_STREAM(this code) 0.2 s after the chunks (mid-body)


def echo(request: H2Received) -> H2Reply:
    return H2Reply(200, [("content-type", "text/plain")], [request.path.encode()])


class H2Upstream(ThreadedServer):
    def __init__(self, handler: Callable[[H2Received], H2Reply] = echo,
                 max_concurrent_streams: int | None = None, window: int = 65535) -> None:
        super().__init__()
        self.handler = handler
        self.max_concurrent_streams = max_concurrent_streams
        self.window = window
        self.requests: list[H2Received] = []
        self.resets: list[int] = []
        self.connections = 0
        self.pings = 0
        self.active = 0                # streams being answered now
        self.peak_active = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window}
        if self.max_concurrent_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self.max_concurrent_streams
        conn.initiate_connection()
        conn.update_settings(settings)
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        tasks: set[asyncio.Task[None]] = set()
        window_opened = asyncio.Event()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    writer.write(conn.data_to_send())
                    break
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = (list(event.headers), bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        received = H2Received(headers, bytes(body), conn_id, event.stream_id)
                        self.requests.append(received)
                        task = asyncio.ensure_future(self._answer(conn, writer, received,
                                                                 window_opened))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets.append(event.stream_id)
                        streams.pop(event.stream_id, None)
                    elif isinstance(event, h2.events.PingReceived):
                        self.pings += 1
                    elif isinstance(event, h2.events.WindowUpdated):
                        window_opened.set()
                writer.write(conn.data_to_send())
        finally:
            for task in tasks:
                task.cancel()
            writer.close()

    async def _answer(self, conn: h2.connection.H2Connection, writer: asyncio.StreamWriter,
                      request: H2Received, window_opened: asyncio.Event) -> None:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            reply = self.handler(request)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            sid = request.stream_id
            if reply.reset is not None:
                conn.reset_stream(sid, reply.reset)
                writer.write(conn.data_to_send())
                return
            end_on_headers = not reply.chunks and reply.trailers is None
            conn.send_headers(sid, [(":status", str(reply.status)), *reply.headers],
                              end_stream=end_on_headers)
            for i, chunk in enumerate(reply.chunks):
                last = (i == len(reply.chunks) - 1 and reply.trailers is None
                        and reply.reset_after is None)
                if i and reply.chunk_delay:
                    writer.write(conn.data_to_send())
                    await asyncio.sleep(reply.chunk_delay)
                while True:     # within the client's windows and frame size
                    room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if room >= len(chunk):
                        conn.send_data(sid, chunk, end_stream=last)
                        break
                    if room > 0:
                        conn.send_data(sid, chunk[:room])
                        chunk = chunk[room:]
                        continue
                    writer.write(conn.data_to_send())
                    window_opened.clear()
                    await window_opened.wait()
            if reply.reset_after is not None:
                writer.write(conn.data_to_send())
                await asyncio.sleep(0.2)
                conn.reset_stream(sid, reply.reset_after)
            elif reply.trailers is not None:
                conn.send_headers(sid, reply.trailers, end_stream=True)
            if reply.goaway:
                conn.close_connection(last_stream_id=sid)
            writer.write(conn.data_to_send())
        except h2.exceptions.StreamClosedError:
            pass
        finally:
            self.active -= 1
