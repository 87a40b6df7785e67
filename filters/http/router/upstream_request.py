"""One upstream request's bookkeeping, shared by the router's plain and retrying paths:
the request body held for resending (SentBody, held_body) and copied to an HTTP/2
stream as it arrives (upload_h2), and how an exchange that ended without a response
head becomes a local reply and is counted."""

from __future__ import annotations

from typing import Any

from sidecar.codec.http1 import LAST_CHUNK, encode_chunk, encode_last_chunk
from sidecar.http import local_reply
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyReset, BodyStream, Request
from sidecar.response_counts import count_response
from sidecar.upstream.http1 import UpstreamProtocolError, UpstreamTimeout
from sidecar.upstream.http2_stream import UpstreamRefused, UpstreamReset

# Request body bytes held for resending on a fresh connection (see Router.exchange)
# when the route has no retry policy; with one, the retry buffer limit applies.
REPLAY_LIMIT = 64 * 1024


class SentBody:
    """The request body written upstream so far, kept while it fits ``limit`` (for resending)."""

    __slots__ = ("pieces", "size", "limit", "replayable", "finished", "written", "framed")

    def __init__(self, limit: int = REPLAY_LIMIT) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.replayable = True
        self.finished = False      # the whole body has been written
        self.written = False       # data() was taken once: later pieces go straight out
        self.framed = True         # pieces in HTTP/1 framing (else the bare body: HTTP/2)

    def add(self, piece: bytes) -> None:
        if not self.replayable:
            if not self.written:
                self.pieces.append(piece)
            return
        self.size += len(piece)
        if self.size > self.limit:
            self.replayable = False
            if self.written:
                self.pieces = []
                return
        self.pieces.append(piece)

    def data(self, head: bytes) -> bytes:
        """Everything to write on a (new) connection: the head and the body held so far."""
        pieces = self.pieces
        data = head + b"".join(pieces) if pieces else head
        self.written = True
        if not self.replayable:
            self.pieces = []
        return data


def held_body(request: Request, limit: int, framed: bool = True) -> SentBody:
    """The request body at hand (whatever has arrived), held for resending up to ``limit``;
    in HTTP/1 chunked framing when the request is chunked and ``framed`` (an HTTP/2
    upstream takes the bare data)."""
    sent = SentBody(limit)
    sent.framed = framed
    body = request.body
    if body is None:
        sent.finished = True
        return sent
    chunked = request.chunked and framed
    first = body.read_nowait()   # type: ignore[union-attr]
    if first:
        sent.add(encode_chunk(first) if chunked else first)
    if body.complete:            # type: ignore[union-attr]
        if chunked:
            sent.add(encode_last_chunk(body.trailers) if body.trailers else LAST_CHUNK)  # type: ignore[union-attr]
        sent.finished = True
    return sent


async def upload_h2(body: BodyStream, stream: Any, sent: SentBody) -> None:
    """Copy the rest of a request body to an HTTP/2 stream, within its flow-control windows,
    then end it (with the request's trailers); a body that breaks off resets the stream."""
    try:
        async for chunk in body:
            sent.add(chunk)
            stream.write(chunk)
            if stream.write_paused and not stream.closed:
                await stream.wait_writable()
            if stream.closed:
                return
    except BodyReset:
        stream.abort()
        return
    sent.finished = True
    stream.finish_request(body.trailers or None)


def count_reply(stats: Any, reply: LocalReply) -> None:
    """An upstream request that ended in a local reply counts as that status (504: a timeout)."""
    if reply.status == 504 and reply.details == "response_timeout":
        stats.upstream_rq_timeout += 1
    count_response(stats.responses, stats.codes, reply.status)


def reply_for(error: Exception) -> LocalReply:
    """The local reply for an exchange that ended without a response head."""
    if isinstance(error, UpstreamTimeout):
        return local_reply.upstream_timeout()
    if isinstance(error, UpstreamProtocolError):
        return local_reply.upstream_protocol_error()
    if isinstance(error, UpstreamRefused):
        return local_reply.remote_reset(refused=True)
    if isinstance(error, UpstreamReset):
        return local_reply.remote_reset()
    return local_reply.connection_termination()


def host_responded(host: Any, status: int, headers: list[tuple[str, str]]) -> None:
    """One attempt got a response head: tell the host's outlier detector, and its health
    checker when the upstream asks to be failed at once (x-envoy-immediate-health-check-fail)."""
    pool = host.pool
    if pool is not None:
        if status >= 500:
            pool.rq_error += 1
        else:
            pool.rq_success += 1
    outlier = host.outlier
    if outlier is not None:
        outlier.put_http_status(status)
    checker = host.health_checker
    if checker is not None:
        for name, _ in headers:
            if name == "x-envoy-immediate-health-check-fail":
                checker.fail_immediately()
                break


def host_failed(host: Any, reply: LocalReply) -> None:
    """One attempt ended without a response head; ``reply.flag`` says how: UF (connect
    failure), UT (timeout), UC / UPE (reset, protocol error)."""
    pool = host.pool
    if pool is not None:
        pool.rq_error += 1
        if reply.flag == "UT":
            pool.rq_timeout += 1
    outlier = host.outlier
    if outlier is not None:
        outlier.put_local_failure(reply.flag)
