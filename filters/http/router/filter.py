"""The router: route action -> cluster -> host -> pooled connection -> upstream request.

Also the route's other actions (direct_response, redirect) and Envoy's
request/response header work: header mutations at every level, rewrites,
x-envoy-expected-rq-timeout-ms, x-envoy-upstream-service-time.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from config import model
from filters.api import FilterContext
from filters.http.router.factory import RouterConfig
from filters.http.router.headers import apply_mutations, redirect_location
from sidecar.codec.events import ResponseHead
from sidecar.codec.http1 import LAST_CHUNK, encode_chunk, encode_last_chunk, serialize_request_head
from sidecar.http import local_reply
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyStream, Request, Response
from sidecar.upstream.http1 import Http1UpstreamConnection, UpstreamClosed, UpstreamProtocolError

# Response headers that belong to one hop (RFC 9110 7.6.1), and the framing
# headers the connection manager writes itself.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "upgrade", "te", "content-length"))


class Router:
    def __init__(self, config: RouterConfig, ctx: FilterContext) -> None:
        self.config = config
        self.clusters = ctx.cluster_manager
        self.hcm: model.HttpConnectionManager = ctx.hcm
        self.http_stats = ctx.stats
        self.suppress_envoy_headers = config.suppress_envoy_headers
        self.loop = asyncio.get_event_loop()

    async def __call__(self, request: Request) -> Response:
        route: model.Route | None = request.route
        if route is None:
            self.http_stats.no_route += 1
            raise local_reply.no_route()
        action = route.action
        if type(action) is model.RouteAction:
            return await self.forward(request, route, action)
        if type(action) is model.DirectResponseAction:
            self.http_stats.rq_direct_response += 1
            body = action.body or b""
            headers = [("content-type", "text/plain")] if body else []
            response = Response(action.status, headers, body, content_length=len(body))
            self.finalize_response(request, response, route, None)
            return response
        self.http_stats.rq_redirect += 1
        location = redirect_location(request, action, route)
        response = Response(action.response_code, [("location", location)], b"", content_length=0)
        self.finalize_response(request, response, route, None)
        return response

    # --- forwarding -------------------------------------------------------------

    def pick_cluster(self, request: Request, action: model.RouteAction
                     ) -> tuple[str, model.WeightedClusterEntry | None]:
        if action.cluster:
            return action.cluster, None
        if action.cluster_header:
            return request.header(action.cluster_header) or "", None
        # weighted_clusters: a uniform draw over total_weight, as Envoy.
        pick = random.randrange(action.total_weight)
        for entry in action.weighted_clusters:
            pick -= entry.weight
            if pick < 0:
                return entry.name, entry
        last = action.weighted_clusters[-1]
        return last.name, last

    async def forward(self, request: Request, route: model.Route, action: model.RouteAction) -> Response:
        name, weighted = self.pick_cluster(request, action)
        cluster = self.clusters.get(name)
        info = request.info
        info.upstream_cluster = name
        if cluster is None:
            self.http_stats.no_cluster += 1
            raise local_reply.no_cluster(action.cluster_not_found_response_code)
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            raise local_reply.no_healthy_upstream()
        info.upstream_host = host.label
        stats = cluster.stats
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        host.active_requests += 1
        start = self.loop.time()
        timeout = action.timeout
        head = self.upstream_head(request, route, action, weighted, host, timeout)
        try:
            if timeout is None:
                response = await self.exchange(request, host, head)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        response = await self.exchange(request, host, head)
                except TimeoutError:
                    stats.upstream_rq_timeout += 1
                    stats.count_response(504)
                    raise local_reply.upstream_timeout() from None
        except LocalReply as reply:
            if reply.status != 504:
                stats.count_response(reply.status)
            raise
        finally:
            stats.upstream_rq_active -= 1
            host.active_requests -= 1
        stats.count_response(response.status)
        if not self.suppress_envoy_headers:
            response.headers.append(("x-envoy-upstream-service-time",
                                     str(int((self.loop.time() - start) * 1000))))
        self.finalize_response(request, response, route, weighted)
        return response

    def upstream_head(self, request: Request, route: model.Route, action: model.RouteAction,
                      weighted: model.WeightedClusterEntry | None, host: Any,
                      timeout: float | None) -> bytes:
        headers = request.headers
        path = request.path
        authority = request.authority
        if action.prefix_rewrite is not None or action.regex_rewrite is not None:
            new_path = rewrite_path(path, route.match, action)
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
        if not self.suppress_envoy_headers:
            # Envoy always tells the upstream how long it will wait.
            headers = [h for h in headers if h[0] != "x-envoy-expected-rq-timeout-ms"]
            if timeout is not None:
                headers.append(("x-envoy-expected-rq-timeout-ms", str(int(timeout * 1000))))
        vh, rc = request.vhost, self.route_config
        # Most specific first, then wider levels, as Envoy (most_specific_header_mutations_wins off).
        if weighted is not None and weighted.request_headers:
            headers = apply_mutations(headers, weighted.request_headers)
        if route.request_headers:
            headers = apply_mutations(headers, route.request_headers)
        if vh.request_headers:
            headers = apply_mutations(headers, vh.request_headers)
        if rc.request_headers:
            headers = apply_mutations(headers, rc.request_headers)
        body = request.body
        if body is None:
            if request.method in ("POST", "PUT", "PATCH"):
                headers.append(("content-length", "0"))
        elif request.chunked:
            headers.append(("transfer-encoding", "chunked"))
        else:
            headers.append(("content-length", str(request.content_length)))
        headers.insert(0, ("host", authority))
        return serialize_request_head(request.method, path, headers)

    @property
    def route_config(self) -> model.RouteConfig:
        return self.hcm.route_config

    async def exchange(self, request: Request, host: Any, head: bytes) -> Response:
        """Send the request on a pooled connection and return the response head with its body.

        A reused connection that the upstream had already closed (no response
        byte received) is retried once on a fresh connection when the request
        body can be sent again: the classic keep-alive race behind "503 UC".
        """
        body = request.body
        first = body.read_nowait() if isinstance(body, BodyStream) else None
        replayable = body is None or (first is not None and body.complete)  # type: ignore[union-attr]
        chunked = request.chunked
        if first and chunked:
            first = encode_chunk(first)
            if body.complete:  # type: ignore[union-attr]
                first += encode_last_chunk(body.trailers) if body.trailers else LAST_CHUNK  # type: ignore[union-attr]
        elif first == b"" and chunked:
            first = LAST_CHUNK
        data = head + first if first else head
        pool = host.pool
        for attempt in (1, 2):
            conn, reused = await pool.acquire()
            waiter = conn.send_head(data, request.method)
            try:
                if body is not None and not (first is not None and body.complete):  # type: ignore[union-attr]
                    await self.stream_body(body, conn, chunked)  # type: ignore[arg-type]
                conn.finish_request()
                response_head, response_body = await waiter
            except UpstreamClosed as closed:
                if reused and replayable and attempt == 1 and not closed.received_any:
                    continue
                raise local_reply.connection_termination() from None
            except UpstreamProtocolError:
                raise local_reply.upstream_protocol_error() from None
            except BaseException:
                # Timeout, downstream gone, or body reset: the exchange can't finish.
                conn.abort()
                raise
            return self.downstream_response(request, response_head, response_body, conn)
        raise AssertionError("unreachable")

    async def stream_body(self, body: BodyStream, conn: Http1UpstreamConnection, chunked: bool) -> None:
        """Copy the request body upstream chunk by chunk, waiting while the socket is backed up."""
        async for chunk in body:
            conn.write(encode_chunk(chunk) if chunked else chunk)
            if conn.write_paused:
                await conn.drain()
        if chunked:
            conn.write(encode_last_chunk(body.trailers) if body.trailers else LAST_CHUNK)

    def downstream_response(self, request: Request, head: ResponseHead, body: BodyStream,
                            conn: Http1UpstreamConnection) -> Response:
        headers = [h for h in head.headers if h[0] not in HOP_BY_HOP]
        no_body = (request.method == "HEAD" or head.status in (204, 304))
        if no_body:
            response_body: BodyStream | bytes | None = b""
        elif body.complete and not head.chunked:
            response_body = body.read_nowait()          # the whole body arrived with the head
        else:
            response_body = body
        response = Response(head.status, headers, response_body, content_length=head.content_length,
                            chunked=head.chunked, reason=head.reason)
        if isinstance(response_body, BodyStream):
            response.on_complete = lambda ok: None if ok and body.complete else conn.abort()
        return response

    def finalize_response(self, request: Request, response: Response, route: model.Route,
                          weighted: model.WeightedClusterEntry | None) -> None:
        headers = response.headers
        vh, rc = request.vhost, self.route_config
        if weighted is not None and weighted.response_headers:
            headers = apply_mutations(headers, weighted.response_headers)
        if route.response_headers:
            headers = apply_mutations(headers, route.response_headers)
        if vh.response_headers:
            headers = apply_mutations(headers, vh.response_headers)
        if rc.response_headers:
            headers = apply_mutations(headers, rc.response_headers)
        response.headers = headers


def rewrite_path(path: str, match: model.RouteMatch, action: model.RouteAction) -> str:
    """prefix_rewrite swaps the matched prefix (or path); regex_rewrite rewrites the path, keeping the query."""
    if action.regex_rewrite is not None:
        bare, sep, query = path.partition("?")
        rewritten = action.regex_rewrite.pattern.sub(action.regex_rewrite.substitution, bare)
        return rewritten + sep + query
    prefix = action.prefix_rewrite or ""
    if match.kind in ("prefix", "path", "path_separated_prefix"):
        return prefix + path[len(match.value):]
    # Envoy: with a regex match, prefix_rewrite replaces the whole path (query kept).
    bare, sep, query = path.partition("?")
    return prefix + sep + query
