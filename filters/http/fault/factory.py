"""Parses envoy.extensions.filters.http.fault.v3.HTTPFault and creates the fault filter.

The same message is the filter-level config (http_filters) and the per-route
one (typed_per_filter_config on a route, virtual host or route config), so
``parse`` serves both; the most specific per-route config replaces the
filter-level one for a request, as in Envoy.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from config import model
from config.translate_routes import RouteTranslator
from filters.api import FilterContext, FilterFactory, HttpFilter
from filters.http.common import Percent, fractional_percent

# The runtime keys name overrides in Envoy's runtime; sidecar has none (the
# bootstrap's layered_runtime is not supported), so every key resolves to the
# configured value, as in Envoy with an empty runtime.  Accepted, unused.
RUNTIME_KEYS = ("delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime",
                "abort_http_status_runtime", "abort_grpc_status_runtime",
                "max_active_faults_runtime", "response_rate_limit_percent_runtime")


@dataclass(frozen=True, slots=True)
class DelayFault:
    fixed_ms: int | None               # None: header_delay (x-envoy-fault-delay-request)
    percent: Percent


@dataclass(frozen=True, slots=True)
class AbortFault:
    http_status: int | None            # fixed http_status
    grpc_status: int | None            # fixed grpc_status
    from_headers: bool                 # header_abort (x-envoy-fault-abort-request / -grpc-request)
    percent: Percent


@dataclass(frozen=True, slots=True)
class FaultConfig:
    delay: DelayFault | None = None
    abort: AbortFault | None = None
    headers: tuple[model.HeaderMatcher, ...] = ()    # all must match for a fault
    downstream_nodes: frozenset[str] = frozenset()    # x-envoy-downstream-service-node values
    max_active_faults: int | None = None              # None: unlimited
    upstream_cluster: str = ""                        # only requests routed to this cluster


class FaultFactory(FilterFactory[FaultConfig]):
    names = ("envoy.filters.http.fault",)
    type_url = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    # The filter reads typed_per_filter_config (config/translate_routes.py asks this).
    per_route = True

    def parse(self, message: Message, path: str) -> FaultConfig:
        # The route translator's checks and header matchers, so errors read as elsewhere.
        t = RouteTranslator(lambda name, type_url: None)
        t.only(message, path, ("delay", "abort", "headers", "downstream_nodes",
                               "max_active_faults", "upstream_cluster", "disable_downstream_cluster_stats",
                               *RUNTIME_KEYS))
        delay = self.delay(t, message, path) if message.HasField("delay") else None
        abort = self.abort(t, message, path) if message.HasField("abort") else None
        headers = tuple(m for i, h in enumerate(message.headers)
                        if (m := t.header_matcher(h, f"{path}.headers[{i}]")) is not None)
        if t.errors:
            raise t.errors[0]
        max_active = (message.max_active_faults.value if message.HasField("max_active_faults")
                      else None)
        return FaultConfig(delay=delay, abort=abort, headers=headers,
                           downstream_nodes=frozenset(message.downstream_nodes),
                           max_active_faults=max_active, upstream_cluster=message.upstream_cluster)

    @staticmethod
    def percent(t: RouteTranslator, msg: Message, path: str) -> Percent:
        """The ``percentage`` field; unset is 0% (as Envoy: no fault)."""
        return fractional_percent(t, msg.percentage, f"{path}.percentage")

    def delay(self, t: RouteTranslator, message: Message, path: str) -> DelayFault:
        d, p = message.delay, f"{path}.delay"
        t.only(d, p, ("fixed_delay", "header_delay", "percentage"))
        percent = self.percent(t, d, p)
        which = d.WhichOneof("fault_delay_secifier")
        if which == "header_delay":
            return DelayFault(None, percent)
        if which is None:
            t.error(p, "one of fixed_delay or header_delay is required")
            return DelayFault(None, percent)
        fixed = d.fixed_delay
        if fixed.seconds < 0 or fixed.nanos < 0 or (fixed.seconds == 0 and fixed.nanos == 0):
            t.error(f"{p}.fixed_delay", "value must be greater than 0s")
        # Whole milliseconds, truncated (Envoy's PROTOBUF_GET_MS_REQUIRED): a delay
        # under 1 ms is accepted and injects nothing.
        return DelayFault(fixed.seconds * 1000 + fixed.nanos // 1_000_000, percent)

    def abort(self, t: RouteTranslator, message: Message, path: str) -> AbortFault:
        a, p = message.abort, f"{path}.abort"
        t.only(a, p, ("http_status", "grpc_status", "header_abort", "percentage"))
        percent = self.percent(t, a, p)
        which = a.WhichOneof("error_type")
        if which == "http_status":
            if not 200 <= a.http_status < 600:
                t.error(f"{p}.http_status", "value must be inside range [200, 600)")
            return AbortFault(a.http_status, None, False, percent)
        if which == "grpc_status":
            return AbortFault(None, a.grpc_status, False, percent)
        if which is None:
            t.error(p, "one of http_status, grpc_status or header_abort is required")
        return AbortFault(None, None, True, percent)

    def create(self, config: FaultConfig | None, ctx: FilterContext) -> HttpFilter:
        from filters.http.fault.filter import FaultFilter
        from sidecar.stats import FaultStats
        # Envoy finds typed_per_filter_config by the filter's name in http_filters.
        return FaultFilter(config or FaultConfig(), ctx.name, ctx.stats.filter_scope(FaultStats))
