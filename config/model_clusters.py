"""The cluster model: clusters, endpoints, and their outlier detection and health checks."""

from __future__ import annotations

from dataclasses import dataclass

from config.model_core import ConfigSource, HeaderValueOption, SocketAddress


# --- clusters --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Locality:
    """envoy.config.core.v3.Locality: where an endpoint runs (Host.locality at run time)."""
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class AssignmentPolicy:
    """ClusterLoadAssignment.policy: how priority and locality health are scaled."""
    overprovisioning_factor: int = 140          # percent (Envoy's default 1.4)
    weighted_priority_health: bool = False      # level health by host weight, not host count


NO_LOCALITY = Locality()
DEFAULT_ASSIGNMENT_POLICY = AssignmentPolicy()


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: SocketAddress
    weight: int = 1
    # UNKNOWN | HEALTHY | UNHEALTHY | DRAINING | TIMEOUT | DEGRADED
    health_status: str = "UNKNOWN"
    hostname: str = ""
    priority: int = 0
    locality: Locality = NO_LOCALITY
    # The locality's load_balancing_weight at this priority (the last LocalityLbEndpoints of
    # that locality and priority that set one, as Envoy); 0 = none (no traffic when the
    # cluster balances by locality weight).
    locality_weight: int = 0
    # The policy of the ClusterLoadAssignment the endpoint came in (the same for all of them).
    policy: AssignmentPolicy = DEFAULT_ASSIGNMENT_POLICY
    # metadata.filter_metadata["envoy.lb"].hash_key: the key RING_HASH / MAGLEV hash the host by
    hash_key: str = ""

    @property
    def usable(self) -> bool:
        """Envoy routes to UNKNOWN, HEALTHY and DEGRADED hosts only."""
        return self.health_status in ("UNKNOWN", "HEALTHY", "DEGRADED")


@dataclass(frozen=True, slots=True)
class UpstreamHttp2:
    """A cluster's explicit_http_config.http2_protocol_options (Envoy's defaults)."""

    max_concurrent_streams: int = 2147483647
    initial_stream_window_size: int = 268435456
    initial_connection_window_size: int = 268435456
    keepalive: tuple[float, float] | None = None    # connection_keepalive (interval, timeout)


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    type: str = "STATIC"                        # STATIC | STRICT_DNS | EDS
    endpoints: tuple[Endpoint, ...] = ()
    lb_policy: str = "ROUND_ROBIN"              # ROUND_ROBIN | RANDOM | LEAST_REQUEST | RING_HASH | MAGLEV
    least_request_choice_count: int = 2
    # Consistent hashing (sidecar/upstream/hash_lb.py): ring_hash_lb_config, maglev_lb_config,
    # common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing
    ring_hash_minimum_ring_size: int = 1024
    ring_hash_maximum_ring_size: int = 8 * 1024 * 1024
    ring_hash_function: str = "XX_HASH"         # XX_HASH | MURMUR_HASH_2
    maglev_table_size: int = 65537
    use_hostname_for_hashing: bool = False
    hash_balance_factor: int = 0                # consistent hashing with bounded loads; 0 = off
    connect_timeout: float = 5.0
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    idle_timeout: float | None = 3600.0         # upstream pooled connection idle timeout
    max_requests_per_connection: int = 0        # 0 = unlimited
    dns_refresh_rate: float = 5.0
    dns_lookup_family: str = "AUTO"             # AUTO | V4_ONLY | V6_ONLY | V4_PREFERRED | ALL
    healthy_panic_threshold: float = 50.0       # percent; 0 disables panic routing
    locality_weighted_lb: bool = False          # common_lb_config.locality_weighted_lb_config
    eds_service_name: str = ""                  # EDS: the ClusterLoadAssignment to ask for
    eds_config_source: ConfigSource | None = None
    http2_options: UpstreamHttp2 | None = None  # set: the upstream speaks HTTP/2
    # use_downstream_protocol_config: HTTP/2 requests go upstream over HTTP/2 (with
    # http2_options), others over HTTP/1.1 (sidecar/upstream/pool_dual.py)
    downstream_protocol: bool = False
    # circuit_breakers.thresholds, priority DEFAULT (Envoy's defaults when unset)
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    retry_budget_percent: float | None = None   # retry_budget set: it replaces max_retries
    retry_budget_min_concurrency: int = 3
    track_remaining: bool = False
    outlier_detection: OutlierDetection | None = None   # None: no outlier detection
    health_check: HealthCheck | None = None     # health_checks[0]; None: no active health checks
    original_dst: OriginalDst | None = None     # type ORIGINAL_DST (sidecar/upstream/original_dst.py)
    upstream_bind_address: str | None = None    # upstream_bind_config.source_address (port 0)

    @property
    def http2(self) -> bool:
        """The upstream speaks HTTP/2 (explicit_http_config.http2_protocol_options)."""
        return self.http2_options is not None and not self.downstream_protocol


@dataclass(frozen=True, slots=True)
class OriginalDst:
    """An ORIGINAL_DST cluster's settings: original_dst_lb_config and cleanup_interval."""
    use_http_header: bool = False
    http_header_name: str = "x-envoy-original-dst-host"
    cleanup_interval: float = 5.0


# --- outlier detection -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """envoy.config.cluster.v3.OutlierDetection, with Envoy's defaults for unset fields.

    Durations are float seconds (the detector works in Envoy's whole milliseconds);
    percentages are whole percents; success_rate_stdev_factor is in thousandths (1900 = 1.9).
    """

    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_local_origin_success_rate: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    max_ejection_time: float = 300.0            # unset: max(300 s, base_ejection_time)
    max_ejection_time_jitter: float = 0.0
    successful_active_health_check_uneject_host: bool = True
    always_eject_one_host: bool = False


# --- health checks -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HttpHealthCheck:
    """HealthCheck.http_health_check: GET ``path`` over HTTP/1.1."""

    path: str
    host: str = ""                              # "" = the cluster's name, as Envoy
    headers_to_add: tuple[HeaderValueOption, ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)   # [start, end) ranges
    retriable_statuses: tuple[tuple[int, int], ...] = ()
    method: str = "GET"
    send: bytes = b""                           # a request body (POST, PUT, PATCH, OPTIONS)
    receive: tuple[bytes, ...] = ()             # blocks the response body must hold, in order
    response_buffer_size: int = 1024            # body bytes matched against ``receive``; 0 = all


@dataclass(frozen=True, slots=True)
class TcpHealthCheck:
    """HealthCheck.tcp_health_check: ``send`` on connect, expect each ``receive`` block in order
    (empty ``receive``: a connect-only check)."""

    send: bytes = b""
    receive: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class GrpcHealthCheck:
    """HealthCheck.grpc_health_check: grpc.health.v1.Health/Check over HTTP/2."""

    service_name: str = ""
    authority: str = ""                         # "" = the cluster's name, as Envoy
    initial_metadata: tuple[HeaderValueOption, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """envoy.config.core.v3.HealthCheck with Envoy's defaults resolved (float seconds).

    Exactly one of ``http``, ``tcp``, ``grpc`` is set.
    """

    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    http: HttpHealthCheck | None = None
    tcp: TcpHealthCheck | None = None
    grpc: GrpcHealthCheck | None = None
    initial_jitter: float = 0.0
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    no_traffic_interval: float = 60.0
    no_traffic_healthy_interval: float = 60.0   # unset: no_traffic_interval
    unhealthy_interval: float = 0.0             # unset: interval
    unhealthy_edge_interval: float = 0.0        # unset: unhealthy_interval
    healthy_edge_interval: float = 0.0          # unset: interval
    reuse_connection: bool = True
    always_log_health_check_failures: bool = False
