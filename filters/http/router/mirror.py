"""Request mirroring (RouteAction.request_mirror_policies): shadow copies of a request.

As Envoy's router shadows a request: the copy carries the headers the main
request goes upstream with, its authority suffixed with ``-shadow`` (unless
disable_shadow_host_suffix_append), ``x-envoy-internal: true`` and
``192.0.2.2`` appended to x-forwarded-for (the address Envoy's internal
async client stamps); it goes to a host of the shadow cluster in a task of
its own, bounded by the route timeout, and its response is read and
discarded.  The main request never waits for it.

A bodyless request is shadowed at once.  A request with a body is shadowed
once the main exchange is over, with the body the router held for resending
(up to the replay or retry buffer limit); a body larger than that is not
mirrored (Envoy streams it: see docs/compatibility.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from config import model
from filters.http.router.upstream_request import (SentBody, count_reply, host_failed,
                                                  host_responded, reply_for)
from sidecar.codec.http1 import serialize_request_head
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import Request
from sidecar.http.route_table import RouteEntry
from sidecar.upstream.http1 import UpstreamClosed, UpstreamProtocolError, UpstreamTimeout
from sidecar.upstream.pool_dual import DualPool, upstream_http2

if TYPE_CHECKING:
    from filters.http.router.filter import Router

log = logging.getLogger(__name__)

SHADOW_FORWARDED_FOR = "192.0.2.2"

# (cluster runtime, serialized head) of each shadow waiting for the request body
Pending = list[tuple[Any, bytes]]


def shadow_authority(authority: str) -> str:
    """Envoy's shadowAppendedHost: ``-shadow`` after the host, before any port."""
    host, port = authority, ""
    colon = authority.rfind(":")
    if colon > authority.rfind("]"):
        host, port = authority[:colon], authority[colon:]
    return f"{host}-shadow{port}"


def shadow_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
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
        if upstream_http2(cluster.config, request):
            log.debug("shadow cluster %s speaks HTTP/2: not mirrored yet", cluster.name)
            continue
        path, authority, headers = router.upstream_parts(
            request, list(request.headers), entry, action, weighted, host, action.timeout)
        if not policy.disable_shadow_host_suffix_append:
            authority = shadow_authority(authority)
        head = serialize_request_head(request.method, path,
                                      [("host", authority), *shadow_headers(headers)])
        if request.body is None:
            launch(router, cluster, request.method, head, action.timeout)
        else:
            pending.append((cluster, head))
    return pending


def finish_shadows(router: Router, request: Request, action: model.RouteAction,
                   pending: Pending, sent: SentBody) -> None:
    """The main exchange is over: shadow a request with a body if the body was held whole."""
    if not (sent.finished and sent.replayable) or (request.chunked and not sent.framed):
        log.debug("request body of %s %s not held whole: not mirrored", request.method, request.path)
        return
    body = b"".join(sent.pieces)
    for cluster, head in pending:
        launch(router, cluster, request.method, head + body, action.timeout)


def launch(router: Router, cluster: Any, method: str, data: bytes, timeout: float | None) -> None:
    loop = router.loop
    deadline = None if timeout is None else loop.time() + timeout
    task = loop.create_task(shadow_exchange(cluster, method, data, deadline))
    router.shadows.add(task)
    task.add_done_callback(router.shadows.discard)


async def shadow_exchange(cluster: Any, method: str, data: bytes, deadline: float | None) -> None:
    """One shadow request on the shadow cluster's pool; the response is read and dropped.
    Counted in the shadow cluster's stats and reported to its host's outlier detector."""
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
            pool = pool.http1()     # shadows go over HTTP/1 only (start_shadows)
        conn = pool.take_idle()
        if conn is None:
            conn = await pool.acquire(deadline)
        waiter = conn.send_head(data, method)
        assert waiter is not None
        if deadline is not None:
            conn.set_deadline(deadline)
        conn.finish_request()
        head, body = await waiter
        if type(body) is not bytes:
            async for _ in body:     # drained, so the connection goes back to the pool
                pass
        host_responded(host, head.status, head.headers)
        stats.count_response(head.status)
    except LocalReply as reply:
        if reply.flag != "UO":
            host_failed(host, reply)
        count_reply(stats, reply)
    except (UpstreamClosed, UpstreamTimeout, UpstreamProtocolError) as error:
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
