"""The router: route action -> cluster -> host -> pooled connection -> upstream request.

Also the route's other actions (direct_response, redirect) and Envoy's
request/response header work: header mutations at every level, rewrites,
x-envoy-expected-rq-timeout-ms, x-envoy-upstream-service-time.  This is the
hot path: one pass over the headers each way, no per-request timer objects
beyond one TimerHandle, no body stream when the whole response came in one read.
The coroutine path's exchange on a connection or stream is in exchange.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from config import model
from filters.api import FilterContext
from filters.http.router.exchange import exchange
from filters.http.router.factory import RouterConfig
from filters.http.router.hash_policy import compute_hash
from filters.http.router.headers import apply_mutations, redirect_location, rewrite_path
from filters.http.router.mirror import finish_shadows, start_shadows
from filters.http.router.retrying import forward_retrying
from filters.http.router.stream_duration import within_duration
from filters.http.router.upstream_request import (REPLAY_LIMIT, SentBody, count_reply, held_body,
                                                  host_failed, host_responded, reply_for)
from sidecar.codec.events import ResponseHead
from sidecar.codec.http1 import serialize_request_head
from sidecar.http import local_reply
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyStream, Request, Response
from sidecar.http.route_table import RouteEntry, route_cluster
from sidecar.http.upgrade import switched_response
from sidecar.response_counts import count_response
from sidecar.upstream.http1 import UpstreamClosed, UpstreamProtocolError
from sidecar.upstream.http2_headers import request_headers as h2_request_headers
from sidecar.upstream.http2_stream import UpstreamRefused
from sidecar.upstream.lb import HASHING_POLICIES
from sidecar.upstream.pool_dual import DualPool, upstream_http2
from sidecar.upstream.pool_h2 import Http2Pool

log = logging.getLogger(__name__)

# Response headers that belong to one hop (RFC 9110 7.6.1), and the framing
# headers the connection manager writes itself.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "upgrade", "te", "content-length"))


class Router:
    def __init__(self, config: RouterConfig, ctx: FilterContext) -> None:
        self.clusters = ctx.cluster_manager
        self.http_stats = ctx.stats
        self.suppress_envoy_headers = config.suppress_envoy_headers
        hcm: model.HttpConnectionManager = ctx.hcm
        # With OVERWRITE (the default) the upstream's Server header goes here, in the
        # same pass as the hop-by-hop headers, and the connection manager adds ours.
        self.strip_response = (HOP_BY_HOP | {"server"}
                               if hcm.server_header_transformation == "OVERWRITE" else HOP_BY_HOP)
        self.loop = asyncio.get_event_loop()
        self.buffer_limit = ctx.buffer_limit    # the retry buffer when the route sets none
        # What a route's hash_policy source_ip / generated cookie take as the client address.
        self.use_remote_address = hcm.use_remote_address
        self.xff_trusted_hops = hcm.xff_num_trusted_hops
        self.shadows: set[asyncio.Task[None]] = set()   # mirrored requests in flight

    async def __call__(self, request: Request) -> Response:
        entry: RouteEntry | None = request.route
        if entry is None:
            self.http_stats.no_route += 1
            raise local_reply.no_route()
        action = entry.action
        if type(action) is model.RouteAction:
            return await self.forward(request, entry, action)
        request.info.response_code_details = "direct_response"     # both kinds below, as Envoy
        if type(action) is model.DirectResponseAction:
            self.http_stats.rq_direct_response += 1
            body = action.body or b""
            headers = [("content-type", "text/plain")] if body else []
            if action.status == 201:
                # Envoy points a 201 Created direct response at the request's own URL.
                headers.append(("location", f"{request.scheme}://{request.authority}{request.path}"))
            return self.finish(Response(action.status, headers, body, content_length=len(body)),
                               entry, None)
        assert type(action) is model.RedirectAction
        self.http_stats.rq_redirect += 1
        location = redirect_location(request, action, entry.route)
        return self.finish(Response(action.response_code, [("location", location)], b"",
                                    content_length=0), entry, None)

    # --- forwarding -------------------------------------------------------------

    def start(self, request: Request, answer: Callable[[Response | LocalReply | None], None]
              ) -> Any:
        """Forward without a coroutine, when nothing has to wait before the response.

        The hot path: a request to a cluster with a warm pooled connection (or, for an
        HTTP/2 host, a stream free on one) is written at once, and the connection calls
        back with the response head, which goes to ``answer`` (a Response, or a
        LocalReply for the error).  No task step, no future.  A request body must be
        there whole (an HTTP/2 client's DATA that came with its HEADERS, as a gRPC
        call's) and go to an HTTP/2 host.  Returns the upstream connection (HTTP/1) or
        stream (HTTP/2), or None when the request needs the coroutine path
        (``__call__``): another action, a body still coming, a cluster to look up in
        vain, a connection to open.  ``answer(None)`` later means the same: the
        keep-alive race (or a refused stream) needs the request sent anew.
        """
        entry = request.route
        body = request.body
        if (entry is None or not entry.callback_path or request.upgrade is not None
                or (body is not None and not body.complete)):
            return None
        action: model.RouteAction = entry.action  # type: ignore[assignment]
        name, weighted = route_cluster(request, action)
        cluster = self.clusters.get(name)
        if cluster is None or cluster.stats.upstream_rq_active >= cluster.max_requests:
            return None     # (max_requests reached: the coroutine path answers 503 UO)
        http2 = upstream_http2(cluster.config, request)
        if body is not None and not http2:
            return None
        hash_key = None
        if action.hash_policy and cluster.config.lb_policy in HASHING_POLICIES:
            hash_key, set_cookie = compute_hash(action.hash_policy, request,
                                                self.use_remote_address, self.xff_trusted_hops)
            if set_cookie is not None:
                return None     # the coroutine path sends the generated cookie back
        elif cluster.original_dst is not None:     # ORIGINAL_DST: the host is the destination
            hash_key = cluster.original_dst.key_for_request(request)
        host = cluster.choose_host(hash_key)
        if host is None:
            return None
        pool = host.pool
        if type(pool) is DualPool:
            pool = pool.http2() if http2 else pool.http1()
        conn = pool.take_idle()
        if conn is None:
            request.upstream_pick = (name, weighted, host)   # the coroutine path connects there
            return None
        stats, start = self.begin(request, name, cluster, host)
        timeout = action.timeout
        data = b""
        trailers = None
        if body is not None:
            data = body.read_nowait() or b""
            trailers = body.trailers

        def on_head(outcome: Any) -> None:
            stats.upstream_rq_active -= 1
            host.active_requests -= 1
            if "DC" in request.info.response_flags:
                # The client went away and its connection manager aborted this exchange:
                # nothing more to count or answer, as when the coroutine path is cancelled.
                return
            try:
                if type(outcome) is tuple:
                    head = outcome[0]
                    host_responded(host, head.status, head.headers)
                    response = self.downstream_response(request, head, outcome[1], conn, host)
                    answer(self.respond(response, entry, weighted, stats, start))
                    return
                was_refused = type(outcome) is UpstreamRefused
                if was_refused or (not http2 and type(outcome) is UpstreamClosed
                                   and not outcome.received_any):
                    # The pooled HTTP/1 connection was already closed (the keep-alive race),
                    # or the upstream refused the stream (it did not process it): the
                    # coroutine path sends it anew (with its body again).
                    stats.upstream_rq_total -= 1      # counted again on the coroutine path
                    request.upstream_pick = (name, weighted, host)
                    request.refused = was_refused
                    if body is not None:
                        request.body = BodyStream()
                        request.body.feed(data)
                        request.body.feed_eof(trailers)
                    answer(None)
                    return
                reply = reply_for(outcome)
                host_failed(host, reply)
            except LocalReply as refused:       # a 101 to a request that asked for none
                reply = refused
            except Exception:
                log.exception("bug: router callback for %s %s", request.method, request.path)
                reply = LocalReply(500, b"", "", "internal_error")
            count_reply(stats, reply)
            answer(reply)

        head = self.upstream_head(request, entry, action, weighted, host, timeout)
        if http2:
            conn.start(head, body is None, on_head)
            if body is not None:
                conn.write(data)
                conn.finish_request(trailers or None)
        else:
            conn.send_head(head, request.method, on_head)
            conn.finish_request()
        if timeout is not None:
            conn.set_deadline(start + timeout)
        return conn

    async def forward(self, request: Request, entry: RouteEntry, action: model.RouteAction) -> Response:
        pick = request.upstream_pick
        if pick is None:
            name, weighted = route_cluster(request, action)
            cluster = self.clusters.get(name)
        else:
            # Router.start chose the host already; its cluster exists.
            name, weighted, host = pick
            cluster = self.clusters.get(name)
        info = request.info
        info.upstream_cluster = name
        if cluster is None:
            self.http_stats.no_cluster += 1
            raise local_reply.no_cluster(action.cluster_not_found_response_code)
        hash_key = set_cookie = None
        if pick is None:
            if action.hash_policy and cluster.config.lb_policy in HASHING_POLICIES:
                hash_key, set_cookie = compute_hash(action.hash_policy, request,
                                                    self.use_remote_address, self.xff_trusted_hops)
            elif cluster.original_dst is not None:
                hash_key = cluster.original_dst.key_for_request(request)
            host = cluster.choose_host(hash_key)
        elif cluster.original_dst is not None:     # retries pick the same destination again
            hash_key = cluster.original_dst.key_for_request(request)
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            raise local_reply.no_healthy_upstream()
        if cluster.stats.upstream_rq_active >= cluster.max_requests:
            raise self.overflow(cluster.stats, local_reply.overflow(), active=True)
        if request.upgrade is not None and cluster.config.http2:
            # An upgrade over HTTP/2 would be an extended CONNECT (RFC 8441): not yet.
            raise LocalReply(403, b"", "", "upgrade_failed", close_connection=True)
        policy = action.retry_policy
        sent = held_body(request, REPLAY_LIMIT if policy is None else
                         policy.buffer_limit if policy.buffer_limit is not None else self.buffer_limit,
                         not upstream_http2(cluster.config, request))
        pending = (start_shadows(self, request, entry, action, weighted, host)
                   if action.mirror_policies and request.upgrade is None else None)
        try:
            if policy is not None:
                attempts = forward_retrying(self, request, entry, action, policy, weighted,
                                            cluster, host, sent, hash_key)
            else:
                attempts = self.forward_once(request, entry, action, name, weighted, cluster,
                                             host, sent)
            if action.max_stream_duration is None and action.grpc_timeout_header_max is None:
                response = await attempts
            else:
                response = await within_duration(request, action, attempts, self.http_stats)
        finally:
            if pending:
                finish_shadows(self, request, action, pending, sent)
        if set_cookie is not None:
            # A generated hash cookie goes on the upstream's response (not on local
            # replies such as a connect failure's 503: Envoy 1.40 adds it there neither).
            response.headers.append(("set-cookie", set_cookie))
        return response

    async def forward_once(self, request: Request, entry: RouteEntry, action: model.RouteAction,
                           name: str, weighted: model.WeightedClusterEntry | None, cluster: Any,
                           host: Any, sent: SentBody) -> Response:
        """One attempt (the route has no retry policy)."""
        stats, start = self.begin(request, name, cluster, host)
        timeout = action.timeout
        head = self.upstream_head(request, entry, action, weighted, host, timeout)
        try:
            response = await exchange(self, request, host, head,
                                           None if timeout is None else start + timeout, sent,
                                           not request.refused)
        except LocalReply as reply:
            if reply.flag == "UO":      # max_pending_requests: never sent
                stats.upstream_rq_total -= 1
                raise self.overflow(stats, reply) from None
            host_failed(host, reply)
            count_reply(stats, reply)
            raise
        finally:
            stats.upstream_rq_active -= 1
            host.active_requests -= 1
        host_responded(host, response.status, response.headers)
        return self.respond(response, entry, weighted, stats, start)

    def overflow(self, stats: Any, reply: LocalReply, active: bool = False) -> LocalReply:
        """A circuit breaker stopped the request: count it (upstream_rq_active_overflow for
        max_requests; the pool counted max_pending_requests) and the 503 UO answered."""
        if active:
            stats.upstream_rq_active_overflow += 1
        if self.suppress_envoy_headers:
            reply.headers = [h for h in reply.headers if h[0] != "x-envoy-overloaded"]
        count_reply(stats, reply)
        return reply
    def begin(self, request: Request, name: str, cluster: Any, host: Any) -> tuple[Any, float]:
        """Account for one upstream request: stream info, cluster stats, host load; returns (stats, start)."""
        info = request.info
        info.upstream_cluster = name
        info.upstream_host = host.label
        stats = cluster.stats
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        host.active_requests += 1
        return stats, self.loop.time()

    def respond(self, response: Response, entry: RouteEntry, weighted: model.WeightedClusterEntry | None,
                stats: Any, start: float) -> Response:
        """Count the upstream's answer, stamp x-envoy-upstream-service-time, mutate headers."""
        count_response(stats.responses, stats.codes, response.status)
        if not self.suppress_envoy_headers and response.upgraded is None:
            response.headers.append(("x-envoy-upstream-service-time",
                                     str(int((self.loop.time() - start) * 1000))))
        return self.finish(response, entry, weighted)

    def upstream_head(self, request: Request, entry: RouteEntry, action: model.RouteAction,
                      weighted: model.WeightedClusterEntry | None, host: Any,
                      timeout: float | None, attempt: int = 0) -> bytes | list[tuple[str, str]]:
        """The request head as sent upstream (request.headers gains the headers added):
        serialized for an HTTP/1.1 host, a header list for an HTTP/2 one."""
        path, authority, headers = self.upstream_parts(request, request.headers, entry, action,
                                                       weighted, host, timeout, attempt)
        pool = host.pool
        if type(pool) is Http2Pool or (type(pool) is DualPool and request.version == "2"):
            return h2_request_headers(request.method, path, authority, request.scheme, headers)
        return serialize_request_head(request.method, path, [("host", authority), *headers])

    def upstream_parts(self, request: Request, headers: list[tuple[str, str]], entry: RouteEntry,
                       action: model.RouteAction, weighted: model.WeightedClusterEntry | None,
                       host: Any, timeout: float | None, attempt: int = 0
                       ) -> tuple[str, str, list[tuple[str, str]]]:
        """Path, authority and headers for upstream: rewrites, Envoy's headers, mutations."""
        path = request.path
        authority = request.authority
        if action.prefix_rewrite is not None or action.regex_rewrite is not None:
            new_path = rewrite_path(path, entry.route.match, action)
            if new_path != path:
                if not self.suppress_envoy_headers:
                    headers.append(("x-envoy-original-path", path))
                path = new_path
        if weighted is not None and weighted.host_rewrite_literal:
            authority = weighted.host_rewrite_literal
        elif action.host_rewrite_literal:
            authority = action.host_rewrite_literal
        elif action.auto_host_rewrite and host.hostname:
            authority = host.hostname
        if timeout is not None and not self.suppress_envoy_headers:
            # Envoy tells the upstream how long it will wait (the connection manager
            # already dropped any value the client sent).
            headers.append(("x-envoy-expected-rq-timeout-ms", str(int(timeout * 1000))))
        if attempt:
            headers.append(("x-envoy-attempt-count", str(attempt)))   # include_request_attempt_count
        if weighted is not None and weighted.request_headers is not None:
            headers = apply_mutations(headers, weighted.request_headers)
        for mutations in entry.request_mutations:
            headers = apply_mutations(headers, mutations)
        body = request.body
        if body is None:
            if request.upgrade is not None:
                headers.extend(request.upgrade)
            elif request.method in ("POST", "PUT", "PATCH"):
                headers.append(("content-length", "0"))
        elif request.chunked:
            headers.append(("transfer-encoding", "chunked"))
        else:
            headers.append(("content-length", str(request.content_length)))
        return path, authority, headers

    def downstream_response(self, request: Request, head: ResponseHead, body: bytes | BodyStream,
                            conn: Any, host: Any) -> Response:
        if head.status == 101:
            return self.switching_protocols(request, head, body, conn, host)
        strip = self.strip_response
        headers = [h for h in head.headers if h[0] not in strip]
        request.info.response_code_details = "via_upstream"
        if request.method == "HEAD" or head.status in (204, 304):
            body = b""
        elif type(body) is not bytes:
            stream = body
            response = Response(head.status, headers, stream, content_length=head.content_length,
                                chunked=head.chunked)
            # Written (or not) downstream: an upstream body that had not all come leaves its
            # connection unusable.  One that came whole handed the connection back to the
            # pool already, perhaps to another request: aborting it then would make that
            # request go out twice (the resend after a closed pooled connection).
            response.on_complete = lambda ok: None if stream.complete else conn.abort()  # type: ignore[union-attr]
            return response
        # The upstream's reason phrase is not kept: Envoy writes the standard one.  A
        # chunked response stays chunked even when it arrived whole, as with Envoy.
        return Response(head.status, headers, body, content_length=head.content_length,
                        chunked=head.chunked and bool(body))

    def switching_protocols(self, request: Request, head: ResponseHead, body: Any,
                            conn: Any, host: Any) -> Response:
        """A 101: for an upgrade request, the response that hands the connection over
        (``body``: the bytes after the head; sidecar.http.upgrade decides whether it
        makes a tunnel); for any other, the upstream broke HTTP."""
        if request.upgrade is None or type(body) is not bytes:
            conn.abort()
            raise reply_for(UpstreamProtocolError("101 to a request without Upgrade"))
        return switched_response(request, head, body, conn, host, self.strip_response)

    def finish(self, response: Response, entry: RouteEntry,
               weighted: model.WeightedClusterEntry | None) -> Response:
        """Apply the response header mutations, most specific level first."""
        if weighted is not None and weighted.response_headers is not None:
            response.headers = apply_mutations(response.headers, weighted.response_headers)
        for mutations in entry.response_mutations:
            response.headers = apply_mutations(response.headers, mutations)
        return response
