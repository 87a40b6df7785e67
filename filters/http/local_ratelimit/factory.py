"""Parses envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit and creates the filter.

The same message is the filter-level config and the per-route one
(typed_per_filter_config; Istio configures it per route): the most specific
per-route config replaces the filter's own for a request, as in Envoy, and
each parsed config has its own token bucket (a new config version starts full
buckets, as Envoy's new filter configs do).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from config import model
from config.translate_routes import RouteTranslator
from filters.api import FilterContext, FilterFactory, HttpFilter
from filters.http.common import Percent, header_options, runtime_percent

MIN_FILL_INTERVAL_MS = 50     # Envoy: "local rate limit token bucket fill timer must be >= 50ms"


class TokenBucket:
    """Envoy's AtomicTokenBucket (the default since the timer-based one was retired): tokens
    refill continuously at tokens_per_fill per fill_interval, up to max_tokens; full at start.
    (Checked against Envoy 1.40: half a fill_interval after emptying a 2-token bucket filled
    by 2 per interval, one request passes.)"""

    __slots__ = ("max_tokens", "rate", "tokens", "last", "clock")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tokens = float(max_tokens)
        self.rate = tokens_per_fill / fill_interval       # tokens per second
        self.tokens = float(max_tokens)
        self.clock = clock
        self.last = clock()

    def consume(self) -> bool:
        """Take one token if there is one."""
        now = self.clock()
        tokens = min(self.max_tokens, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


@dataclass(frozen=True, slots=True)
class BucketSpec:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float           # seconds


@dataclass(frozen=True, slots=True)
class LocalRateLimitConfig:
    stat_prefix: str
    bucket_spec: BucketSpec | None = None       # None: no token bucket, every request is "ok"
    filter_enabled: Percent | None = None       # None: 0%, as Envoy ("for safety")
    filter_enforced: Percent | None = None      # None: 0%
    status: int = 429
    resource_exhausted: bool = False            # rate_limited_as_resource_exhausted
    response_headers: model.HeaderMutations | None = None
    request_headers_when_not_enforced: model.HeaderMutations | None = None
    # The bucket of this config version: shared by every request this config applies to.
    bucket: TokenBucket | None = field(default=None, compare=False, hash=False, repr=False)


class LocalRateLimitFactory(FilterFactory[LocalRateLimitConfig]):
    names = ("envoy.filters.http.local_ratelimit",)
    type_url = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
    per_route = True

    def parse(self, message: Message, path: str) -> LocalRateLimitConfig:
        t = RouteTranslator(lambda name, type_url: None)
        m = message
        t.only(m, path, ("stat_prefix", "status", "token_bucket", "filter_enabled",
                         "filter_enforced", "request_headers_to_add_when_not_enforced",
                         "response_headers_to_add", "local_rate_limit_per_downstream_connection",
                         "always_consume_default_token_bucket",
                         "rate_limited_as_resource_exhausted"))
        if not m.stat_prefix:
            t.error(f"{path}.stat_prefix", "value length must be at least 1 characters")
        if m.local_rate_limit_per_downstream_connection:
            t.error(f"{path}.local_rate_limit_per_downstream_connection",
                    "a token bucket per downstream connection is not supported by sidecar yet "
                    "(see docs/compatibility.md)")
        spec = self.token_bucket(t, m, path) if m.HasField("token_bucket") else None
        status = 429
        if m.HasField("status"):
            t.only(m.status, f"{path}.status", ("code",))
            if m.status.code == 0:
                t.error(f"{path}.status.code", "value must not be in list [0]")
            # Envoy's toErrorCode: anything under 400 is a 429.
            status = m.status.code if m.status.code >= 400 else 429
        response = header_options(t, m.response_headers_to_add, f"{path}.response_headers_to_add")
        not_enforced = header_options(t, m.request_headers_to_add_when_not_enforced,
                                      f"{path}.request_headers_to_add_when_not_enforced")
        enabled = runtime_percent(t, m, "filter_enabled", path)
        enforced = runtime_percent(t, m, "filter_enforced", path)
        if t.errors:
            raise t.errors[0]
        bucket = (TokenBucket(spec.max_tokens, spec.tokens_per_fill, spec.fill_interval)
                  if spec is not None else None)
        return LocalRateLimitConfig(
            stat_prefix=m.stat_prefix, bucket_spec=spec, filter_enabled=enabled,
            filter_enforced=enforced, status=status,
            resource_exhausted=m.rate_limited_as_resource_exhausted,
            response_headers=model.HeaderMutations(response) if response else None,
            request_headers_when_not_enforced=(model.HeaderMutations(not_enforced)
                                               if not_enforced else None),
            bucket=bucket)

    @staticmethod
    def token_bucket(t: RouteTranslator, m: Message, path: str) -> BucketSpec:
        tb, p = m.token_bucket, f"{path}.token_bucket"
        t.only(tb, p, ("max_tokens", "tokens_per_fill", "fill_interval"))
        if tb.max_tokens == 0:
            t.error(f"{p}.max_tokens", "value must be greater than 0")
        per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
        if tb.HasField("tokens_per_fill") and per_fill == 0:
            t.error(f"{p}.tokens_per_fill", "value must be greater than 0")
        fi = tb.fill_interval
        interval_ms = fi.seconds * 1000 + fi.nanos // 1_000_000
        if not tb.HasField("fill_interval"):
            t.error(f"{p}.fill_interval", "value is required")
        elif fi.seconds < 0 or fi.nanos < 0 or (fi.seconds == 0 and fi.nanos == 0):
            t.error(f"{p}.fill_interval", "value must be greater than 0s")
        elif interval_ms < MIN_FILL_INTERVAL_MS:
            t.error(f"{p}.fill_interval", "local rate limit token bucket fill timer must be >= 50ms")
        return BucketSpec(tb.max_tokens, per_fill or 1, max(interval_ms, 1) / 1000)

    def create(self, config: LocalRateLimitConfig | None, ctx: FilterContext) -> HttpFilter:
        from filters.http.local_ratelimit.filter import LocalRateLimitFilter
        return LocalRateLimitFilter(config, ctx.name, ctx.stats,
                                    route_config=getattr(ctx.hcm, "route_config", None))

