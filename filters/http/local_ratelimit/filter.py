"""The local rate limit filter at run time: a token per request, or a local 429.

As Envoy's (source/extensions/filters/http/local_ratelimit): per request the
most specific per-route config replaces the filter's own; when the config is
enabled (filter_enabled, 0% when unset) it counts ``enabled`` and takes a
token: ``ok``, or ``rate_limited``; then, when enforced (filter_enforced, 0%
when unset), ``enforced`` and the local reply (``local_rate_limited``, flag
RL, response_headers_to_add), else the request goes on with
request_headers_to_add_when_not_enforced.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from filters.api import Handler, LocalReply, Request, Response, request_config
from filters.http.local_ratelimit.factory import LocalRateLimitConfig, Percent
from filters.http.router.headers import apply_mutations
from sidecar.stats import LocalRateLimitStats

BODY = b"local_rate_limited"
DETAILS = "local_rate_limited"
RESOURCE_EXHAUSTED = 8


class LocalRateLimitFilter:
    def __init__(self, config: LocalRateLimitConfig | None, name: str, http_stats: Any,
                 randrange: Callable[[int], int] = random.randrange,
                 route_config: Any = None) -> None:
        self.config = config
        self.name = name                  # the key of its typed_per_filter_config
        self.http_stats = http_stats      # where the stat_prefix scopes are kept
        self.randrange = randrange        # injectable for tests
        # Envoy's stats exist from the start (show 0): the filter's, and those of the
        # per-route configs of an inline route config (over RDS: on first use).
        for prefix in self.stat_prefixes(config, route_config):
            LocalRateLimitStats.shared(http_stats, prefix)

    async def __call__(self, request: Request, next: Handler, /) -> Response:
        settings = request_config(request, self.name, self.config, LocalRateLimitConfig)
        if settings is None:
            return await next(request)
        if settings is None or not self.draw(settings.filter_enabled):
            return await next(request)
        stats = LocalRateLimitStats.shared(self.http_stats, settings.stat_prefix)
        stats.enabled += 1
        bucket = settings.bucket
        if bucket is None or bucket.consume():
            stats.ok += 1
            return await next(request)
        stats.rate_limited += 1
        if not self.draw(settings.filter_enforced):
            if settings.request_headers_when_not_enforced is not None:
                request.headers = apply_mutations(request.headers,
                                                  settings.request_headers_when_not_enforced)
            return await next(request)
        stats.enforced += 1
        raise self.reply(settings)

    def stat_prefixes(self, config: LocalRateLimitConfig | None, route_config: Any) -> list[str]:
        configs: list[Any] = [config]
        if route_config is not None:
            levels: list[Any] = [route_config]
            for vh in route_config.virtual_hosts:
                levels.append(vh)
                levels.extend(vh.routes)
            configs += [c for level in levels for key, c in level.typed_per_filter_config
                        if key == self.name]
        return [c.stat_prefix for c in configs if isinstance(c, LocalRateLimitConfig)]

    def draw(self, percent: Percent | None) -> bool:
        if percent is None or percent.numerator == 0:
            return False
        if percent.numerator >= percent.denominator:
            return True
        return self.randrange(percent.denominator) < percent.numerator

    @staticmethod
    def reply(settings: LocalRateLimitConfig) -> LocalReply:
        headers: list[tuple[str, str]] = []
        if settings.response_headers is not None:
            headers = apply_mutations(headers, settings.response_headers)
        reply = LocalReply(settings.status, BODY, "RL", DETAILS, headers=headers)
        if settings.resource_exhausted:     # for a gRPC request (gRPC-shaped by the connection)
            reply.grpc_status = RESOURCE_EXHAUSTED
        return reply
