"""Envoy-named counters and gauges, kept as plain ints and rendered for Prometheus on scrape.

The hot path only does ``stats.downstream_rq_total += 1`` on a ``__slots__``
object: prometheus-client metric objects take a lock per update, which costs
more than the rest of a counter bump.  The scopes are rendered in Envoy's own
Prometheus text (counters then gauges, each sorted, integer values; the text
that prometheus-client's exposition writes renames counters to *_total), e.g. ``http.ingress_http.downstream_rq_2xx``
becomes ``envoy_http_downstream_rq_xx{envoy_response_code_class="2",
envoy_http_conn_manager_prefix="ingress_http"}``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sidecar.response_counts import count_class, count_response


class Scope:
    """A named group of counters and gauges, e.g. cluster ``backend``."""

    __slots__ = ("name", "responses")
    COUNTERS: ClassVar[tuple[str, ...]] = ()
    GAUGES: ClassVar[tuple[str, ...]] = ()
    PROM_PREFIX: ClassVar[str] = ""       # "envoy_cluster_"
    DOTTED_PREFIX: ClassVar[str] = ""     # "cluster."
    DOTTED_SUFFIX: ClassVar[str] = ""     # after the name: "fault." in http.<prefix>.fault.*
    LABEL: ClassVar[str] = ""             # "envoy_cluster_name"
    # For scopes that count responses: the names of the completed counter (index 0)
    # and of the N-xx counters (index N), whose values live in ``responses``.
    RESPONSE_COUNTERS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        for stat in self.COUNTERS + self.GAUGES:
            setattr(self, stat, 0)
        self.responses = [0] * len(self.RESPONSE_COUNTERS)

    if TYPE_CHECKING:
        # The stats are slots named in COUNTERS and GAUGES: plain ints to mypy too.
        def __getattr__(self, name: str) -> int: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    def count_class(self, status: int) -> None:
        """One response: <x>_rq_completed and <x>_rq_<N>xx (no class counter outside 1xx-5xx).

        List increments: cheaper on the hot path than attributes named at run time
        (which calls sidecar.response_counts directly, not this method).
        """
        count_class(self.responses, status)

    @property
    def dotted_base(self) -> str:
        """What precedes each stat's name on Envoy's /stats page: ``http.ingress_http.``."""
        name = f"{self.name}." if self.name else ""
        return f"{self.DOTTED_PREFIX}{name}{self.DOTTED_SUFFIX}"

    def values(self) -> Iterator[tuple[str, int, bool]]:
        """(stat name, value, is_counter) for every stat in this scope."""
        for stat in self.COUNTERS:
            yield stat, getattr(self, stat), True
        yield from zip(self.RESPONSE_COUNTERS, self.responses, [True] * len(self.responses))
        for stat in self.GAUGES:
            yield stat, getattr(self, stat), False


FilterScope = TypeVar("FilterScope", bound=Scope)


class HttpStats(Scope):
    """http.<stat_prefix>.* of one http_connection_manager."""

    COUNTERS = ("downstream_cx_total", "downstream_cx_http1_total", "downstream_cx_destroy",
                "downstream_cx_protocol_error", "downstream_cx_idle_timeout",
                "downstream_rq_total", "downstream_rq_http1_total",
                "downstream_cx_http2_total", "downstream_rq_http2_total",
                "downstream_rq_too_many_premature_resets",
                "downstream_rq_rx_reset", "downstream_rq_tx_reset", "downstream_rq_timeout",
                "downstream_rq_max_duration_reached",
                "downstream_rq_non_relative_path", "downstream_rq_too_large",
                "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
                "no_route", "no_cluster", "rq_direct_response", "rq_redirect",
                "downstream_cx_upgrades_total", "downstream_rq_idle_timeout")
    GAUGES = ("downstream_cx_active", "downstream_cx_http1_active", "downstream_rq_active",
              "downstream_cx_http2_active", "downstream_cx_upgrades_active")
    __slots__ = COUNTERS + GAUGES + ("filters",)
    PROM_PREFIX = "envoy_http_"
    DOTTED_PREFIX = "http."
    LABEL = "envoy_http_conn_manager_prefix"
    RESPONSE_COUNTERS = ("downstream_rq_completed", "downstream_rq_1xx", "downstream_rq_2xx",
                         "downstream_rq_3xx", "downstream_rq_4xx", "downstream_rq_5xx")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        # The HTTP filters' scopes under this prefix (http.<prefix>.fault.*), by scope class.
        self.filters: dict[type[Scope], Scope] = {}

    def filter_scope(self, kind: type[FilterScope]) -> FilterScope:
        """The scope of an HTTP filter kind under this prefix, made on first use.

        Kept here, not per filter instance, so the counters keep counting across
        config versions and every filter of that kind on this prefix shares them
        (as Envoy's stats are shared by name).
        """
        scope = self.filters.get(kind)
        if scope is None:
            scope = self.filters[kind] = kind(self.name)
        return scope  # type: ignore[return-value]


class Http2Stats(Scope):
    """http2.*: the HTTP/2 codec stats of all downstream connections, at the root as Envoy's
    (made on the first HTTP/2 connection)."""

    COUNTERS = ("cookies_total_bytes_too_large", "dropped_headers_with_underscores", "goaway_sent",
                "header_list_size_too_large", "header_overflow", "headers_cb_no_stream",
                "inbound_empty_frames_flood", "inbound_priority_frames_flood",
                "inbound_window_update_frames_flood", "keepalive_timeout", "metadata_empty_frames",
                "outbound_control_flood", "outbound_flood",
                "requests_rejected_with_underscores_in_headers", "rx_messaging_error", "rx_reset",
                "stream_refused_errors", "trailers", "tx_flush_timeout", "tx_reset")
    GAUGES = ("deferred_stream_close", "outbound_control_frames_active", "outbound_frames_active",
              "pending_send_bytes", "streams_active")
    __slots__ = COUNTERS + GAUGES
    PROM_PREFIX = "envoy_http2_"
    DOTTED_PREFIX = "http2."


class FaultStats(Scope):
    """http.<stat_prefix>.fault.*: the fault filters of one http_connection_manager."""

    COUNTERS = ("aborts_injected", "delays_injected", "faults_overflow", "response_rl_injected")
    GAUGES = ("active_faults",)
    __slots__ = COUNTERS + GAUGES
    PROM_PREFIX = "envoy_http_fault_"
    DOTTED_PREFIX = "http."
    DOTTED_SUFFIX = "fault."
    LABEL = "envoy_http_conn_manager_prefix"


class CorsStats(Scope):
    """http.<stat_prefix>.cors.*: the CORS filters of one http_connection_manager."""

    COUNTERS = ("origin_invalid", "origin_valid")
    __slots__ = COUNTERS
    PROM_PREFIX = "envoy_http_cors_"
    DOTTED_PREFIX = "http."
    DOTTED_SUFFIX = "cors."
    LABEL = "envoy_http_conn_manager_prefix"


class LocalRateLimitStats(Scope):
    """<stat_prefix>.http_local_rate_limit.*: the local_ratelimit filter's own stat_prefix (not
    the connection manager's), at the root as Envoy's; Prometheus
    envoy_http_local_rate_limit_ok{envoy_local_http_ratelimit_prefix="<stat_prefix>"}.

    One scope per stat_prefix, shared by every filter (and per-route config) naming it, in
    any connection manager: ``shared(http_stats, stat_prefix)``.  It is kept (and rendered)
    under the first connection manager's scope that asked for it, through a subclass per
    stat_prefix, so it renders once and its counters survive config updates.
    """

    COUNTERS = ("enabled", "enforced", "ok", "rate_limited", "shadow_mode")
    __slots__ = COUNTERS + ("__weakref__",)
    PROM_PREFIX = "envoy_http_local_rate_limit_"
    DOTTED_SUFFIX = "http_local_rate_limit."
    LABEL = "envoy_local_http_ratelimit_prefix"
    STAT_PREFIX: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        super().__init__(self.STAT_PREFIX)     # not the connection manager's prefix

    @classmethod
    def shared(cls, http: HttpStats, stat_prefix: str) -> LocalRateLimitStats:
        scope = _LOCAL_RATE_LIMIT_LIVE.get(stat_prefix)
        if scope is None:
            kind = _LOCAL_RATE_LIMIT_KINDS.get(stat_prefix)
            if kind is None:
                kind = _LOCAL_RATE_LIMIT_KINDS[stat_prefix] = type(
                    "LocalRateLimitStats", (cls,), {"__slots__": (), "STAT_PREFIX": stat_prefix})
            scope = _LOCAL_RATE_LIMIT_LIVE[stat_prefix] = http.filter_scope(kind)
        return scope


_LOCAL_RATE_LIMIT_KINDS: dict[str, type[LocalRateLimitStats]] = {}
# The live scope of each stat_prefix (gone with the StatsStore that renders it).
_LOCAL_RATE_LIMIT_LIVE: weakref.WeakValueDictionary[str, LocalRateLimitStats] = \
    weakref.WeakValueDictionary()


class TcpStats(Scope):
    """tcp.<stat_prefix>.* of one tcp_proxy."""

    COUNTERS = ("downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
                "downstream_cx_tx_bytes_total", "idle_timeout", "upstream_flush_total")
    GAUGES = ("downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered",
              "upstream_flush_active")
    __slots__ = COUNTERS + GAUGES
    PROM_PREFIX = "envoy_tcp_"
    DOTTED_PREFIX = "tcp."
    LABEL = "envoy_tcp_prefix"


class ListenerStats(Scope):
    """listener.<address>.* of one listener."""

    COUNTERS = ("downstream_cx_total", "downstream_cx_destroy", "downstream_cx_overflow",
                "downstream_pre_cx_timeout", "downstream_listener_filter_remote_close",
                "no_filter_chain_match")
    GAUGES = ("downstream_cx_active", "downstream_pre_cx_active")
    __slots__ = COUNTERS + GAUGES
    PROM_PREFIX = "envoy_listener_"
    DOTTED_PREFIX = "listener."
    LABEL = "envoy_listener_address"


class ClusterStats(Scope):
    """cluster.<name>.* of one upstream cluster."""

    COUNTERS = ("upstream_cx_total", "upstream_cx_http1_total", "upstream_cx_http2_total",
                "upstream_cx_connect_fail",
                "upstream_cx_connect_timeout", "upstream_cx_destroy", "upstream_cx_destroy_local",
                "upstream_cx_destroy_remote", "upstream_cx_destroy_with_active_rq",
                "upstream_cx_destroy_local_with_active_rq",
                "upstream_cx_destroy_remote_with_active_rq", "upstream_cx_idle_timeout",
                "upstream_cx_max_requests", "upstream_cx_protocol_error",
                "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
                "upstream_rq_total", "upstream_rq_timeout", "upstream_rq_rx_reset",
                "upstream_rq_tx_reset", "upstream_rq_retry", "upstream_cx_none_healthy",
                "upstream_rq_retry_success", "upstream_rq_retry_overflow",
                "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_backoff_exponential",
                "upstream_rq_per_try_timeout", "upstream_cx_overflow", "upstream_rq_pending_overflow",
                "upstream_rq_active_overflow", "upstream_rq_pending_total",
                "update_attempt", "update_success", "update_failure", "update_rejected",
                "lb_healthy_panic")
    GAUGES = ("upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
              "membership_total", "membership_healthy", "membership_degraded",
              "membership_excluded")
    __slots__ = COUNTERS + GAUGES + ("codes", "circuit_breakers", "outlier_detection",
                                     "health_check", "hash_lb")
    PROM_PREFIX = "envoy_cluster_"
    DOTTED_PREFIX = "cluster."
    LABEL = "envoy_cluster_name"
    RESPONSE_COUNTERS = ("upstream_rq_completed", "upstream_rq_1xx", "upstream_rq_2xx",
                         "upstream_rq_3xx", "upstream_rq_4xx", "upstream_rq_5xx")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.codes: dict[int, int] = {}     # upstream_rq_<code>
        # cluster.<name>.circuit_breakers.default.*, read from the live cluster at render time
        self.circuit_breakers: CircuitBreakerStats | None = None
        # cluster.<name>.outlier_detection.*, while the cluster has outlier_detection
        self.outlier_detection: OutlierDetectionStats | None = None
        # cluster.<name>.health_check.*, while the cluster has an active health checker
        self.health_check: HealthCheckStats | None = None
        # cluster.<name>.ring_hash_lb.* / maglev_lb.* (sidecar/upstream/hash_lb.py)
        self.hash_lb: Scope | None = None

    def count_response(self, status: int) -> None:
        """The response returned for one upstream request (not each retried attempt)."""
        count_response(self.responses, self.codes, status)


class CircuitBreakerStats(Scope):
    """cluster.<name>.circuit_breakers.default.*: gauges computed when rendered, by ``read``
    (the cluster's open flags and, with track_remaining, the remaining_* counts), so the
    request path only keeps the counts it has anyway."""

    __slots__ = ("read",)
    PROM_PREFIX = "envoy_cluster_circuit_breakers_default_"
    DOTTED_PREFIX = "cluster."
    DOTTED_SUFFIX = "circuit_breakers.default."
    LABEL = "envoy_cluster_name"

    def __init__(self, name: str, read: Callable[[], list[tuple[str, int]]]) -> None:
        super().__init__(name)
        self.read = read

    def values(self) -> Iterator[tuple[str, int, bool]]:
        for stat, value in self.read():
            yield stat, value, False


class ServerStats(Scope):
    COUNTERS = ()
    GAUGES = ("live", "concurrency", "uptime", "state", "total_connections")
    __slots__ = GAUGES
    PROM_PREFIX = "envoy_server_"
    DOTTED_PREFIX = "server."
    LABEL = ""


class LdsStats(Scope):
    """listener_manager.lds.*: the listener subscription's updates."""

    COUNTERS = ("update_attempt", "update_success", "update_rejected", "update_failure")
    __slots__ = COUNTERS
    PROM_PREFIX = "envoy_listener_manager_lds_"
    DOTTED_PREFIX = "listener_manager.lds."
    LABEL = ""


class CdsStats(LdsStats):
    """cluster_manager.cds.*: the cluster subscription's updates."""

    __slots__ = ()
    PROM_PREFIX = "envoy_cluster_manager_cds_"
    DOTTED_PREFIX = "cluster_manager.cds."


class ControlPlaneStats(Scope):
    """control_plane.*: the ADS connection."""

    GAUGES = ("connected_state",)
    __slots__ = GAUGES
    PROM_PREFIX = "envoy_control_plane_"
    DOTTED_PREFIX = "control_plane."
    LABEL = ""


RootScope = TypeVar("RootScope", bound=Scope)


class StatsStore:
    """All scopes by name; scopes survive config changes so counters keep counting."""

    def __init__(self) -> None:
        self.http: dict[str, HttpStats] = {}
        self.tcp: dict[str, TcpStats] = {}
        self.listener: dict[str, ListenerStats] = {}
        self.cluster: dict[str, ClusterStats] = {}
        self.server = ServerStats("")
        self.http2: Http2Stats | None = None      # http2.*, once an HTTP/2 connection came
        # Root-level scopes that exist only once something uses them, as in Envoy:
        # listener_manager.lds, cluster_manager.cds, control_plane (xDS in use),
        # tls_inspector, http_inspector (a listener has the filter).
        self.roots: dict[str, Scope] = {}

    def http_scope(self, prefix: str) -> HttpStats:
        scope = self.http.get(prefix)
        if scope is None:
            scope = self.http[prefix] = HttpStats(prefix)
        return scope

    def http2_scope(self) -> Http2Stats:
        if self.http2 is None:
            self.http2 = Http2Stats("")
        return self.http2

    def tcp_scope(self, prefix: str) -> TcpStats:
        scope = self.tcp.get(prefix)
        if scope is None:
            scope = self.tcp[prefix] = TcpStats(prefix)
        return scope

    def listener_scope(self, name: str) -> ListenerStats:
        scope = self.listener.get(name)
        if scope is None:
            scope = self.listener[name] = ListenerStats(name)
        return scope

    def cluster_scope(self, name: str) -> ClusterStats:
        scope = self.cluster.get(name)
        if scope is None:
            scope = self.cluster[name] = ClusterStats(name)
        return scope

    def root_scope(self, kind: type[RootScope]) -> RootScope:
        """The root-level scope of this kind, created on first use."""
        scope = self.roots.get(kind.DOTTED_PREFIX)
        if scope is None:
            scope = self.roots[kind.DOTTED_PREFIX] = kind("")
        return scope  # type: ignore[return-value]

    def scopes(self) -> Iterator[Scope]:
        yield self.server
        if self.http2 is not None:
            yield self.http2
        yield from list(self.roots.values())
        for group in (self.cluster, self.http, self.listener, self.tcp):
            for scope in list(group.values()):
                yield scope
                if isinstance(scope, ClusterStats) and scope.circuit_breakers is not None:
                    yield scope.circuit_breakers
                if isinstance(scope, ClusterStats) and scope.outlier_detection is not None:
                    yield scope.outlier_detection
                if isinstance(scope, ClusterStats) and scope.health_check is not None:
                    yield scope.health_check
                if isinstance(scope, ClusterStats) and scope.hash_lb is not None:
                    yield scope.hash_lb
                if isinstance(scope, HttpStats):
                    yield from list(scope.filters.values())

    def dotted(self) -> Iterator[tuple[str, int, bool]]:
        """Envoy's plain /stats view: ("cluster.backend.upstream_rq_total", 3, is_counter).

        Iterates copies, so a worker thread may render while the loop adds scopes.
        """
        for scope in list(self.scopes()):
            base = scope.dotted_base
            for stat, value, counter in scope.values():
                yield base + stat, value, counter
            if isinstance(scope, ClusterStats):
                for code, value in sorted(dict(scope.codes).items()):
                    yield f"{base}upstream_rq_{code}", value, True

    def prometheus_text(self, keep: Callable[[str, int], bool] | None = None) -> str:
        """Envoy's /stats/prometheus body for these scopes.

        ``keep(dotted_name, value)``, when given, selects the stats to render (the
        admin's filter= and usedonly), judged on their /stats names.
        """
        families: dict[tuple[bool, str], list[str]] = {}

        def add(name: str, counter: bool, labels: str, value: int) -> None:
            families.setdefault((not counter, name), []).append(f"{name}{{{labels}}} {value}")

        for scope in self.scopes():
            base = f'{scope.LABEL}="{_escape(scope.name)}"' if scope.LABEL else ""
            dotted = scope.dotted_base
            for stat, value, counter in scope.values():
                if keep is not None and not keep(dotted + stat, value):
                    continue
                if stat[-2:] == "xx" and stat[-4] == "_" and stat[-3] in "12345":
                    # downstream_rq_2xx -> downstream_rq_xx{envoy_response_code_class="2"}
                    add(scope.PROM_PREFIX + stat[:-3] + "xx", counter,
                        f'envoy_response_code_class="{stat[-3]}",{base}', value)
                else:
                    add(scope.PROM_PREFIX + stat, counter, base, value)
            if isinstance(scope, ClusterStats):
                for code, value in sorted(scope.codes.items()):
                    if keep is not None and not keep(f"{dotted}upstream_rq_{code}", value):
                        continue
                    add("envoy_cluster_upstream_rq", True,
                        f'envoy_response_code="{code}",{base}', value)
        out = []
        for (gauge, name), samples in sorted(families.items()):
            out.append(f"# TYPE {name} {'gauge' if gauge else 'counter'}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class OutlierDetectionStats(Scope):
    """cluster.<name>.outlier_detection.*: the cluster's outlier detector (only for clusters
    with outlier_detection, as Envoy).  Kept on the ClusterStats, so the counters carry on
    across CDS updates of the cluster; ejections_active is the detector's own count."""

    COUNTERS = ("ejections_consecutive_5xx", "ejections_detected_consecutive_5xx",
                "ejections_detected_consecutive_gateway_failure",
                "ejections_detected_consecutive_local_origin_failure",
                "ejections_detected_degradation", "ejections_detected_failure_percentage",
                "ejections_detected_local_origin_failure_percentage",
                "ejections_detected_local_origin_success_rate", "ejections_detected_success_rate",
                "ejections_enforced_consecutive_5xx",
                "ejections_enforced_consecutive_gateway_failure",
                "ejections_enforced_consecutive_local_origin_failure",
                "ejections_enforced_failure_percentage",
                "ejections_enforced_local_origin_failure_percentage",
                "ejections_enforced_local_origin_success_rate", "ejections_enforced_success_rate",
                "ejections_enforced_total", "ejections_overflow", "ejections_success_rate",
                "ejections_total")
    GAUGES = ("ejections_active",)
    __slots__ = COUNTERS + GAUGES
    PROM_PREFIX = "envoy_cluster_outlier_detection_"
    DOTTED_PREFIX = "cluster."
    DOTTED_SUFFIX = "outlier_detection."
    LABEL = "envoy_cluster_name"


class HealthCheckStats(Scope):
    """cluster.<name>.health_check.*: the cluster's active health checker (Envoy's
    ALL_HEALTH_CHECKER_STATS); present only on clusters with health_checks, as in Envoy."""

    COUNTERS = ("attempt", "success", "failure", "passive_failure", "network_failure",
                "verify_cluster")
    GAUGES = ("healthy", "degraded")
    __slots__ = COUNTERS + GAUGES
    PROM_PREFIX = "envoy_cluster_health_check_"
    DOTTED_PREFIX = "cluster."
    DOTTED_SUFFIX = "health_check."
    LABEL = "envoy_cluster_name"
