"""The admin HTTP server: Envoy 1.40's admin endpoints over asyncio + h11.

Owns the admin listener and its connections: HTTP/1.1 with keep-alive and
pipelining, one request at a time, codec errors answered as Envoy answers them
(400/426/431 with the reason phrase, then close).  What each path returns lives
in sidecar.admin.endpoints.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import h11

from sidecar.admin.endpoints import ENDPOINTS, TEXT_BARE, AdminTarget, Reply, ThreadView, help_text

__all__ = ["AdminServer", "AdminTarget", "start_admin"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 60 * 1024   # Envoy's max_request_headers_kb default; beyond it: 431
READ_SIZE = 64 * 1024
IDLE_TIMEOUT_S = 3600.0        # Envoy's HCM idle_timeout default: a silent client is dropped


# --- HTTP ----------------------------------------------------------------------

class AdminServer(asyncio.AbstractServer):
    """The listening server plus its connections, which close() also closes:
    asyncio.Server.close() alone leaves accepted connections open on 3.11."""

    def __init__(self, target: AdminTarget) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server else ()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def listen(self, host: str, port: int) -> None:
        # The address family follows the host: "::1" binds IPv6 only (asyncio sets
        # IPV6_V6ONLY), "0.0.0.0" IPv4 only; "[::1]" is accepted as Envoy writes it.
        self._server = await asyncio.start_server(self._connection, host.strip("[]"), port)
        log.info("admin listening on %s",
                 ", ".join(str(s.getsockname()[:2]) for s in self._server.sockets))

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._server is not None
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        # A zero high-water mark makes drain() wait until the reply is in the kernel,
        # so /quitquitquit's "OK" leaves before the shutdown it triggers.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.LocalProtocolError):
            pass
        except Exception:   # never let one connection's bug reach the client or the server
            log.exception("admin connection failed")
        finally:
            self._writers.discard(writer)
            self._connections.discard(task)
            writer.transport.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            try:
                request = await _read_request(conn, reader)
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send_codec_error(conn, writer, e.error_status_hint)
                return
            except _Rejected as e:
                await _send_codec_error(conn, writer, e.status, with_body=e.with_body)
                return
            if request is None:
                return
            reply = await self._dispatch(request)
            await _send_reply(conn, writer, request, reply)
            if reply.after is not None:
                try:
                    reply.after()
                except Exception:
                    log.exception("admin action after %s failed", request.target)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return   # Connection: close from either side
            conn.start_next_cycle()

    async def _dispatch(self, request: h11.Request) -> Reply:
        path, _, query = request.target.decode("latin-1").partition("?")
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return Reply(404, "invalid path. " + help_text())
        method = request.method.decode("latin-1")
        if endpoint.post_only and method != "POST":
            return Reply(405, f"Method {method} not allowed, POST required.")
        params = parse_query(query)
        try:
            if endpoint.offload:
                view = ThreadView.of(self._target)
                return await asyncio.to_thread(endpoint.handler, view, params)
            return endpoint.handler(self._target, params)
        except Exception:
            log.exception("admin handler for %s failed", path)
            return Reply(500, "internal error\n")


def parse_query(query: str) -> dict[str, str]:
    """Envoy's query parsing: %-decoding only ('+' stays '+', it is regex syntax
    in ?filter=), first occurrence wins, a bare key has an empty value."""
    params: dict[str, str] = {}
    for piece in query.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            params.setdefault(unquote(key), unquote(value))
    return params


class _Rejected(Exception):
    """A request refused before its body is read; the connection closes after the reply."""

    def __init__(self, status: int, with_body: bool = True) -> None:
        super().__init__(status)
        self.status = status
        self.with_body = with_body


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next request, its body read and dropped (no endpoint takes one); None at EOF."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            _check_request(event)
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # h11.Data: dropped. PAUSED cannot come before EndOfMessage.


def _check_request(request: h11.Request) -> None:
    """What Envoy's codec refuses and h11 lets through (Envoy 1.40, checked by hand)."""
    if request.http_version != b"1.1":
        raise _Rejected(426)   # the admin has no accept_http_10
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        # h11 lets chunked win (RFC 9112 6.3); Envoy refuses the pair: smuggling risk.
        raise _Rejected(400)
    if not request.target.startswith(b"/"):
        # Envoy's admin answers absolute-form and "*" with an empty 404, other forms 400.
        raise _Rejected(404, with_body=False) if (
            b"://" in request.target or request.target == b"*") else _Rejected(400)


def _headers(content_type: str, length: int) -> list[tuple[str, str]]:
    # Envoy's admin header set and order; it sends chunked, we a content-length.
    return [("content-type", content_type), ("cache-control", "no-cache, max-age=0"),
            ("x-content-type-options", "nosniff"), ("date", email.utils.formatdate(usegmt=True)),
            ("server", "envoy"), ("content-length", str(length))]


async def _send_reply(conn: h11.Connection, writer: asyncio.StreamWriter,
                      request: h11.Request, reply: Reply) -> None:
    body = reply.body.encode()
    headers = _headers(reply.content_type, len(body))
    data = conn.send(h11.Response(status_code=reply.status, headers=headers,
                                  reason=HTTPStatus(reply.status).phrase.encode()))
    if request.method != b"HEAD":
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    writer.write(data)
    await writer.drain()


async def _send_codec_error(conn: h11.Connection, writer: asyncio.StreamWriter,
                            status: int, with_body: bool = True) -> None:
    """Envoy's reply to a request its codec rejects: the reason phrase, then close."""
    phrase = HTTPStatus(status).phrase
    body = phrase.encode() if with_body else b""
    headers = [("content-length", str(len(body)))]
    if body:
        headers.append(("content-type", TEXT_BARE))
    headers += [("date", email.utils.formatdate(usegmt=True)), ("server", "envoy"),
                ("connection", "close")]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=phrase.encode()))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    writer.write(data)
    await writer.drain()


async def start_admin(target: AdminTarget, host: str, port: int) -> AdminServer:
    """Listen on host:port ("127.0.0.1", "::1", "0.0.0.0", "::"; port 0 picks one)."""
    admin = AdminServer(target)
    await admin.listen(host, port)
    return admin
