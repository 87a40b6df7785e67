"""Everything one http_connection_manager filter chain shares across its connections.

Built once per config version: the compiled route table, the filter chain,
the parser class, the stats scope.  Connections keep the context they were
accepted with, so a config update never changes a request mid-flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from config import model
from filters.api import FilterContext, Handler
from filters.registry import http_filter_factory
from sidecar.http.access_log import AccessLogs
from sidecar.http.route_table import RouteTable
from sidecar.stats import Http2Stats, HttpStats


class HcmContext:
    def __init__(self, config: model.HttpConnectionManager, cluster_manager: Any,
                 stats: HttpStats, request_parser: type, buffer_limit: int,
                 access_logs: AccessLogs | None = None,
                 route_config: model.RouteConfig | None = None,
                 http2_scope: Callable[[], Http2Stats] | None = None) -> None:
        self.config = config
        self.stats = stats
        # Gives http2.* (shared by every HTTP/2 connection), asked on the first HTTP/2
        # connection: Envoy has those stats only once it made an HTTP/2 codec.
        self.http2_scope: Callable[[], Http2Stats] = http2_scope or _private_http2_scope
        self.loop = asyncio.get_running_loop()
        # Inline, or (with rds) the RDS resource; replaced in place on each RDS
        # update, so new requests see new routes at once.
        routes = route_config or config.route_config
        assert routes is not None, "an RDS listener is only built once its routes arrived"
        self.route_table = RouteTable(routes)
        self.buffer_limit = buffer_limit
        self.draining = False
        self.connections: set[Any] = set()
        max_bytes = config.max_request_headers_kb * 1024
        max_count = config.max_headers_count
        self.new_request_parser: Callable[[], Any] = lambda: request_parser(max_bytes, max_count)
        self.handler = build_chain(config, FilterContext(cluster_manager, stats, config,
                                                                 buffer_limit=buffer_limit))
        # With the router alone in the chain, the connection manager may use its
        # synchronous path (Router.start) and skip the coroutine machinery.
        enabled = [f for f in config.http_filters if not f.disabled]
        self.router: Any = self.handler if len(enabled) == 1 and hasattr(self.handler, "start") else None
        # (open file, parsed format) per access_log entry; empty means no logging work at all.
        self.access_logs = [access_logs.open(a) for a in config.access_logs] if access_logs else []

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


def _private_http2_scope(scope: list[Http2Stats] = []) -> Http2Stats:
    """For contexts made without a stats store (unit tests): one scope of their own."""
    if not scope:
        scope.append(Http2Stats(""))
    return scope[0]


def build_chain(config: model.HttpConnectionManager, ctx: FilterContext) -> Handler:
    """Compose http_filters into one handler: each filter gets the next one as ``next``."""
    filters = [f for f in config.http_filters if not f.disabled]
    terminal = filters[-1]
    factory = http_filter_factory(terminal.name, terminal.type_url)
    assert factory is not None and factory.terminal, "translate guarantees a router at the end"
    handler: Handler = factory.create(terminal.config, replace(ctx, name=terminal.name))  # type: ignore[assignment]
    for f in reversed(filters[:-1]):
        factory = http_filter_factory(f.name, f.type_url)
        assert factory is not None
        handler = _link(factory.create(f.config, replace(ctx, name=f.name)), handler)  # type: ignore[arg-type]
    return handler


def _link(filter_: Any, next_handler: Handler) -> Handler:
    async def handler(request: Any) -> Any:
        return await filter_(request, next_handler)
    return handler
