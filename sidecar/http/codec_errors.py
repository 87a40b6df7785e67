"""HTTP/1 downstream codec errors, answered and accounted as Envoy 1.40 does.

Envoy's codec dispatches one request at a time, so what the client sent before the
bytes it refuses is served first: earlier pipelined requests are answered, then the
error is (400/426/431/501 with the reason phrase as a text/plain body, flag DPE,
connection closed).  Bytes that never made a request head are logged as a request
without headers ("- - HTTP/1.1"); a request whose own body broke the codec is
answered with the error as its local reply.  A request without Host, which the
parser cannot go past, is the connection manager's refusal (no DPE), in its turn.

These are functions of the HttpConnection, not its methods, for the reason
sidecar.http.upgrade gives: this module stays interpreted, and the compiled
connection manager calls into it only when the codec refuses something.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.codec.events import Body, ParseError, RequestHead
from sidecar.codec.http1 import REASONS
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyReset, Request
from sidecar.http.responding import log_refused

if TYPE_CHECKING:
    from sidecar.http.connection import HttpConnection


def parse_error(conn: HttpConnection, error: ParseError) -> None:
    """The codec refused bytes of this read.  What it parsed before them
    (``error.events``) is handled first, as Envoy's codec, which dispatches one request
    at a time, does: earlier requests are answered, then the error is.  A request whose
    body the error broke begins (its filter chain and router start, as Envoy's
    decodeHeaders) once the requests before it are answered, and is then answered
    by protocol_error like one whose bad chunk came in a later read."""
    events = error.events
    end = len(events)
    # Envoy holds a read's body until the read has parsed cleanly (or the message has
    # ended): body bytes of the failing read after the last complete message are
    # neither forwarded nor counted.
    while end and type(events[end - 1]) is Body:
        end -= 1
    head = events[end - 1] if end else None
    if type(head) is not RequestHead:
        # Nothing, or complete requests: protocol_error defers its reply after them.
        conn._dispatch(events[:end])
        if not conn.closing:
            protocol_error(conn, error)
        return
    conn._dispatch(events[:end - 1])
    if conn.closing:
        return
    hold(conn, head, error)


def protocol_error(conn: HttpConnection, error: ParseError) -> None:
    """The codec refused what the client sent.  As Envoy's codec errors: the reply is
    ``error.status`` with its reason phrase as a text/plain body, then the connection
    closes; the request it hit is logged with flag DPE and counted (downstream_rq_total,
    the status class, downstream_cx_protocol_error, downstream_rq_rx_reset).  Bytes
    before any request head are logged as a request with no headers ("- -")."""
    if conn.codec_error is not None:
        return          # the dead parser saying it again: already being answered
    if error.head is not None:
        # A missing Host: the parser could not go on, but Envoy's connection manager
        # refuses it (no DPE, no protocol error) with the head logged, after the
        # requests before it.
        hold(conn, error.head, error)
        return
    stats = conn.stats
    stats.downstream_cx_protocol_error += 1
    stats.downstream_rq_rx_reset += 1       # Envoy resets the stream after the reply
    reply = LocalReply(error.status, REASONS.get(error.status, "").encode(), "DPE",
                       error.details, close_connection=True)
    if not conn.queue:
        answer_unparsed(conn, reply)
        return
    conn.codec_error = reply
    if conn.parsing is None:
        # A later, pipelined message: Envoy answers the requests before it first.
        # Reading stays paused; resume_after_error sends the reply once they are done.
        conn._pause_reading()
        return
    # The body of the request being answered broke off: its filter chain stops, and
    # conn._respond answers the request with the reply (or, its response already begun,
    # the connection is dropped).
    conn.parsing.reset(BodyReset("downstream protocol error"))
    conn.parsing = None
    if conn.task is not None:
        conn.task.cancel()
    else:
        conn.transport.abort()  # type: ignore[union-attr]


def resume_after_error(conn: HttpConnection) -> None:
    """The connection would read on, but a codec error (or a held request) is pending:
    once the requests before it are answered, answer it (or take the request up)."""
    if conn.queue:
        return
    if conn.codec_error is not None:
        answer_unparsed(conn, conn.codec_error)
    else:
        # Not now: finish(), which got us here, goes on to the queue.
        conn.ctx.loop.call_soon(take_up_held, conn)


def hold(conn: HttpConnection, head: RequestHead, error: ParseError) -> None:
    """Take up a request the codec refused once the requests before it are answered
    (Envoy's codec reads a pipelined request only then)."""
    conn.held = (head, error)
    if conn.queue:
        conn._pause_reading()       # resume_after_error takes it up once they are answered
    else:
        take_up_held(conn)


def take_up_held(conn: HttpConnection) -> None:
    """Refuse the held request without a Host; or begin the one whose body broke the
    codec and, once its task has taken its first step, answer it with the error."""
    if conn.held is None or conn.closing:
        return
    head, error = conn.held
    conn.held = None
    if error.head is not None:
        conn.refuse(head, "", head.target, error.status, error.details)
        return
    conn._on_head(head)
    if not conn.closing:
        # call_soon runs after the task _start created: a task cancelled before its
        # first step would never answer.
        conn.ctx.loop.call_soon(late_protocol_error, conn, error)


def late_protocol_error(conn: HttpConnection, error: ParseError) -> None:
    """protocol_error for a held request, unless the connection closed meanwhile."""
    if not conn.closing:
        protocol_error(conn, error)


def answer_unparsed(conn: HttpConnection, reply: LocalReply) -> None:
    """Answer bytes that never made a request head (a codec error), and log them as a
    request without headers, as Envoy does."""
    headers = conn._reject(reply.status, reply.body.decode("latin-1"), reply.details)
    if conn.ctx.access_logs:
        # Envoy's stream has the codec's protocol (HTTP/1.1 until a head was decoded).
        request = Request("", "", "", "", [], None)
        request.info.bytes_sent = len(reply.body)
        log_refused(conn.ctx, request, conn.peer, conn.local, reply.status, headers,
                    reply.details, reply.flag)


def answer_codec_error(conn: HttpConnection, request: Request, reply: LocalReply) -> None:
    """The request's own body broke the codec before its response began: answer it
    with the codec's reply, flag DPE, and close (Envoy's sendLocalReply on the stream)."""
    response = conn._local_response(request, reply)
    conn._write_whole(request, response, conn._frame(request, response))
    conn.finish(request, response.status, response.headers, False)
