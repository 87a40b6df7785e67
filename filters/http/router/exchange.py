"""One upstream exchange: the request sent on a pooled HTTP/1.1 connection or on a
stream of an HTTP/2 connection, its body streamed up, the response head (with its
body or body stream) back as the Response the router answers with.

The router's coroutine path (a body still coming, a connection to open, retries)
runs through here; Router.start's callback path does the same for the common case
without a coroutine.  What resending one exchange allows is decided here too: a
reused HTTP/1.1 connection the upstream had already closed (the keep-alive race),
and an HTTP/2 stream the upstream refused, are sent once more.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from filters.http.router.upstream_request import SentBody, reply_for, upload_h2
from sidecar.codec.http1 import LAST_CHUNK, encode_chunk, encode_last_chunk
from sidecar.http.message import BodyStream, Request, Response
from sidecar.upstream.http1 import (Http1UpstreamConnection, UpstreamClosed, UpstreamProtocolError,
                                    UpstreamTimeout)
from sidecar.upstream.http2_stream import UpstreamRefused
from sidecar.upstream.pool_dual import DualPool

if TYPE_CHECKING:
    from filters.http.router.filter import Router


async def exchange(router: Router, request: Request, host: Any,
                   head: bytes | list[tuple[str, str]], deadline: float | None, sent: SentBody,
                   race_replay: bool = True) -> Response:
    """Send the request on a pooled connection; return the response head with its body.

    ``sent`` holds the request body read so far (``held_body``), and keeps what
    is streamed while it fits its limit.  A reused connection that the upstream
    had already closed (no response byte received) is retried once on a fresh
    connection, when everything sent so far is still held: the classic
    keep-alive race behind "503 UC" (not when ``race_replay`` is off: a retry
    policy that retries resets handles it, as in Envoy).
    """
    if type(head) is list:
        return await exchange_h2(router, request, host, head, deadline, sent, race_replay)
    assert type(head) is bytes
    body = request.body
    chunked = request.chunked
    pool = host.pool
    if type(pool) is DualPool:
        pool = pool.http1()
    for attempt in (1, 2):
        conn = pool.take_idle()
        reused = conn is not None
        if conn is None:
            conn = await pool.acquire(deadline)
        waiter = conn.send_head(sent.data(head), request.method)
        assert waiter is not None
        if deadline is not None:
            conn.set_deadline(deadline)
        try:
            if not sent.finished:
                await stream_body(body, conn, chunked, sent)  # type: ignore[arg-type]
            conn.finish_request()
            response_head, response_body = await waiter
        except UpstreamClosed as closed:
            if (reused and sent.replayable and attempt == 1 and not closed.received_any
                    and race_replay):
                continue
            raise reply_for(closed) from None
        except (UpstreamTimeout, UpstreamProtocolError) as e:
            raise reply_for(e) from None
        except BaseException:
            # Downstream gone or its body broke off: the exchange can't finish.
            conn.abort()
            raise
        return router.downstream_response(request, response_head, response_body, conn, host)
    raise AssertionError("unreachable")


async def exchange_h2(router: Router, request: Request, host: Any,
                      headers: list[tuple[str, str]], deadline: float | None, sent: SentBody,
                      refused_replay: bool) -> Response:
    """``exchange`` on an HTTP/2 host: a stream of its pool.

    A request body still arriving is sent by a task of its own while the response
    comes back (gRPC bidirectional calls interleave); a response head that comes
    first makes the request not replayable.  A stream the upstream did not process
    (REFUSED_STREAM, or above a GOAWAY's last stream id) is sent once more when
    everything sent so far is still held, as the HTTP/1 keep-alive race is (not when
    ``refused_replay`` is off: a retry policy that retries resets handles it).
    """
    body = request.body
    pool = host.pool
    if type(pool) is DualPool:
        pool = pool.http2()
    for attempt in (1, 2):
        stream = pool.take_idle() or await pool.acquire(deadline)
        waiter = stream.send_head(headers, end_stream=body is None)
        if deadline is not None:
            stream.set_deadline(deadline)
        try:
            if body is not None:
                stream.write(sent.data(b""))
                if sent.finished:
                    stream.finish_request(body.trailers or None)
                else:
                    stream.uploader = asyncio.ensure_future(upload_h2(body, stream, sent))
            response_head, response_body = await waiter
        except UpstreamRefused as refused:
            stream.stop_upload()
            if sent.replayable and attempt == 1 and refused_replay:
                continue
            raise reply_for(refused) from None
        except (UpstreamClosed, UpstreamTimeout, UpstreamProtocolError) as e:
            stream.stop_upload()
            raise reply_for(e) from None
        except BaseException:
            stream.stop_upload()
            stream.abort()
            raise
        if not sent.finished:
            sent.replayable = False     # the rest of the body is still going up this stream
        return router.downstream_response(request, response_head, response_body, stream, host)
    raise AssertionError("unreachable")


async def stream_body(body: BodyStream, conn: Http1UpstreamConnection, chunked: bool,
                      sent: SentBody) -> None:
    """Copy the request body upstream chunk by chunk, waiting while the socket is backed up."""
    async for chunk in body:
        piece = encode_chunk(chunk) if chunked else chunk
        sent.add(piece)
        conn.write(piece)
        if conn.write_paused and not conn.closed:
            await conn.wait_writable()
        if conn.closed:
            return      # timed out or reset: the head waiter says which
    if chunked:
        piece = encode_last_chunk(body.trailers) if body.trailers else LAST_CHUNK
        sent.add(piece)
        conn.write(piece)
    sent.finished = True
