"""Request mirroring (RouteAction.request_mirror_policies): shadow copies of a request.

As Envoy's router shadows a request: the copy carries the headers the main
request goes upstream with, its authority suffixed with ``-shadow`` (unless
disable_shadow_host_suffix_append), ``x-envoy-internal: true`` and
``192.0.2.2`` appended to x-forwarded-for (the address Envoy's internal
async client stamps); it goes to a host of the shadow cluster in a task of
its own, bounded by the route timeout, and its response is read and
discarded.  The main request never waits for it.

The shadow speaks the shadow cluster's upstream protocol, which need not be the
main cluster's: an HTTP/2 header list, DATA and trailers on a stream of its HTTP/2
pool for a cluster configured for HTTP/2 (a gRPC call mirrored to another gRPC
cluster), else an HTTP/1.1 head and body on a connection of its HTTP/1 pool.  A
cluster that follows the downstream protocol (use_downstream_protocol_config) gets
HTTP/1.1 whatever the client spoke, as in Envoy: its shadows go through the
internal async client, whose stream says HTTP/1.1.  Either way the same
accounting: the shadow cluster's request stats, its circuit breakers, the host's
outlier detector.

A bodyless request is shadowed at once.  A request with a body is shadowed
once the main exchange is over, with the body the router held for resending
(up to the replay or retry buffer limit); a body larger than that is not
mirrored (Envoy streams it: see docs/compatibility.md).  The held body is in
the main upstream's framing (HTTP/1 chunks, or bare for HTTP/2): each shadow
gets it re-framed for its own upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from config import model
from filters.http.router.upstream_request import (SentBody, count_reply, host_failed,
                                                  host_responded, reply_for)
from sidecar.codec.http1 import encode_chunk, encode_last_chunk, serialize_request_head
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import Request
from sidecar.http.route_table import RouteEntry
from sidecar.upstream.http1 import UpstreamClosed, UpstreamProtocolError, UpstreamTimeout
from sidecar.upstream.http2_headers import request_headers as h2_request_headers
from sidecar.upstream.pool_dual import DualPool

if TYPE_CHECKING:
    from filters.http.router.filter import Router

log = logging.getLogger(__name__)

SHADOW_FORWARDED_FOR = "192.0.2.2"

Headers = list[tuple[str, str]]


class Shadow:
    """One shadow copy of a request: its cluster and its head, serialized for an HTTP/1.1
    upstream (bytes) or as an HTTP/2 header list with the pseudo-headers (``http2``)."""

    __slots__ = ("cluster", "method", "head", "http2")

    def __init__(self, cluster: Any, method: str, head: bytes | Headers, http2: bool) -> None:
        self.cluster = cluster
        self.method = method
        self.head = head
        self.http2 = http2

    def send(self, conn: Any, body: bytes | None, trailers: Headers | None) -> Any:
        """Write the whole request on ``conn`` (an HTTP/1 connection or an HTTP/2 stream);
        returns the waiter for the response head.  ``body`` is in this shadow's framing."""
        if self.http2:
            waiter = conn.send_head(self.head, end_stream=body is None)
            if body is not None:
                conn.write(body)        # queued within the stream's flow-control windows
                conn.finish_request(trailers or None)
            return waiter
        assert type(self.head) is bytes
        waiter = conn.send_head(self.head + body if body else self.head, self.method)
        conn.finish_request()
        return waiter


# Shadows waiting for the request body
Pending = list[Shadow]


def shadow_authority(authority: str) -> str:
    """Envoy's shadowAppendedHost: ``-shadow`` after the host, before any port."""
    host, port = authority, ""
    colon = authority.rfind(":")
    if colon > authority.rfind("]"):
        host, port = authority[:colon], authority[colon:]
    return f"{host}-shadow{port}"


def shadow_headers(headers: Headers) -> Headers:
    """The main request's upstream headers plus what Envoy's shadow adds."""
    out = []
    forwarded = False
    for name, value in headers:
        if name == "x-forwarded-for" and not forwarded:
            value = f"{value},{SHADOW_FORWARDED_FOR}"
            forwarded = True
        elif name == "x-envoy-internal":
            continue
        out.append((name, value))
    out.append(("x-envoy-internal", "true"))
    if not forwarded:
        out.append(("x-forwarded-for", SHADOW_FORWARDED_FOR))
    return out


def start_shadows(router: Router, request: Request, entry: RouteEntry, action: model.RouteAction,
                  weighted: model.WeightedClusterEntry | None, host: Any) -> Pending:
    """Shadow the request to each mirror policy's cluster that this request is sampled for.

    Called before the main request's head is built (it reads request.headers as the
    client sent them).  Bodyless requests go at once; the shadows of a request with
    a body are returned, for ``finish_shadows`` once the body has been held.
    """
    pending: Pending = []
    for policy in action.mirror_policies:
        if policy.numerator < policy.denominator and \
                random.randrange(policy.denominator) >= policy.numerator:
            continue
        name = policy.cluster or request.header(policy.cluster_header or "")
        cluster = router.clusters.get(name) if name else None
        if cluster is None:
            continue        # Envoy: an unknown cluster (from the header) is not mirrored
        path, authority, headers = router.upstream_parts(
            request, list(request.headers), entry, action, weighted, host, action.timeout)
        if not policy.disable_shadow_host_suffix_append:
            authority = shadow_authority(authority)
        headers = shadow_headers(headers)
        shadow: Shadow
        if cluster.config.http2:        # (not the main request's upstream_http2: see above)
            shadow = Shadow(cluster, request.method, h2_request_headers(
                request.method, path, authority, request.scheme, headers), True)
        else:
            shadow = Shadow(cluster, request.method, serialize_request_head(
                request.method, path, [("host", authority), *headers]), False)
        if request.body is None:
            launch(router, shadow, None, None, action.timeout)
        else:
            pending.append(shadow)
    return pending


def finish_shadows(router: Router, request: Request, action: model.RouteAction,
                   pending: Pending, sent: SentBody) -> None:
    """The main exchange is over: shadow a request with a body if the body was held whole."""
    if not (sent.finished and sent.replayable):
        log.debug("request body of %s %s not held whole: not mirrored", request.method, request.path)
        return
    held = b"".join(sent.pieces)
    trailers = request.body.trailers if request.body is not None else None
    # The held body in each upstream's framing, made once: HTTP/2 takes the bare data
    # (trailers apart), HTTP/1.1 the chunks with the trailers when the request is
    # chunked (the shadow's head says so, as the main request's does).
    if request.chunked and sent.framed:
        bare, http1 = unchunk(held), held
    else:
        bare = held
        http1 = (encode_chunk(held) + encode_last_chunk(trailers)) if request.chunked else held
    for shadow in pending:
        launch(router, shadow, bare if shadow.http2 else http1, trailers, action.timeout)


def unchunk(data: bytes) -> bytes:
    """The data of HTTP/1.1 chunks (RFC 9112 7.1) the router framed itself (well formed):
    up to the last chunk, whose trailers the request body keeps too."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].partition(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        start = eol + 2
        out.append(data[start:start + size])
        pos = start + size + 2


def launch(router: Router, shadow: Shadow, body: bytes | None, trailers: Headers | None,
           timeout: float | None) -> None:
    loop = router.loop
    deadline = None if timeout is None else loop.time() + timeout
    task = loop.create_task(shadow_exchange(shadow, body, trailers, deadline))
    router.shadows.add(task)
    task.add_done_callback(router.shadows.discard)


async def shadow_exchange(shadow: Shadow, body: bytes | None, trailers: Headers | None,
                          deadline: float | None) -> None:
    """One shadow request on the shadow cluster's pool for its protocol; the response is
    read and dropped.  Counted in the shadow cluster's stats and reported to its host's
    outlier detector, whichever the protocol."""
    cluster = shadow.cluster
    stats = cluster.stats
    if stats.upstream_rq_active >= cluster.max_requests:
        stats.upstream_rq_active_overflow += 1
        return
    host = cluster.choose_host()
    if host is None:
        stats.upstream_cx_none_healthy += 1
        return
    stats.upstream_rq_total += 1
    stats.upstream_rq_active += 1
    host.active_requests += 1
    conn = None
    try:
        pool = host.pool
        if type(pool) is DualPool:
            pool = pool.http1()     # a shadow's "downstream" is HTTP/1.1 (see above)
        conn = pool.take_idle()
        if conn is None:
            conn = await pool.acquire(deadline)
        waiter = shadow.send(conn, body, trailers)
        assert waiter is not None
        if deadline is not None:
            conn.set_deadline(deadline)
        head, response_body = await waiter
        if type(response_body) is not bytes:
            # Drained, so the HTTP/1 connection goes back to the pool, the HTTP/2 stream
            # ends (and frees its slot) and its DATA is acknowledged.
            async for _ in response_body:
                pass
        host_responded(host, head.status, head.headers)
        stats.count_response(head.status)
    except LocalReply as reply:
        if reply.flag != "UO":
            host_failed(host, reply)
        count_reply(stats, reply)
    except (UpstreamClosed, UpstreamTimeout, UpstreamProtocolError) as error:
        # (UpstreamClosed covers an HTTP/2 stream's reset and refusal too)
        failure = reply_for(error)
        host_failed(host, failure)
        count_reply(stats, failure)
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        raise
    except Exception:
        log.exception("shadow request to cluster %s failed", cluster.name)
        if conn is not None:
            conn.abort()
    finally:
        stats.upstream_rq_active -= 1
        host.active_requests -= 1
