"""The frozen config model the runtime reads: listeners, routes, clusters, endpoints.

Built only by ``config.translate`` from Envoy's protobuf messages; nothing on
the hot path touches protobuf.  Durations are float seconds, ``None`` meaning
"disabled".  Every object is immutable: a new config is a new object graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from config.matchers import StringMatcher


@dataclass(frozen=True, slots=True)
class SocketAddress:
    address: str
    port: int
    ipv4_compat: bool = False

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address


# --- headers -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """envoy.config.core.v3.HeaderValueOption: a header to add, and how."""

    name: str                # lower-case
    value: str
    # APPEND_IF_EXISTS_OR_ADD | ADD_IF_ABSENT | OVERWRITE_IF_EXISTS_OR_ADD | OVERWRITE_IF_EXISTS
    action: str = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty_value: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutations:
    """One level's *_headers_to_add / *_headers_to_remove (``None`` stands for none at all)."""

    add: tuple[HeaderValueOption, ...] = ()
    remove: tuple[str, ...] = ()


# --- route matching -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """envoy.config.route.v3.HeaderMatcher, all legacy forms folded into one."""

    name: str                                   # lower-case
    string: StringMatcher | None = None         # exact/prefix/suffix/contains/regex
    present: bool | None = None                 # present_match
    range: tuple[int, int] | None = None        # [start, end)
    invert: bool = False
    treat_missing_as_empty: bool = False


@dataclass(frozen=True, slots=True)
class QueryParameterMatcher:
    name: str
    string: StringMatcher | None = None
    present: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    # "prefix" | "path" | "safe_regex" | "path_separated_prefix"
    kind: str
    value: str                                  # the prefix/path/regex text
    case_sensitive: bool = True
    regex: Any = None                           # compiled RE2 pattern when kind == "safe_regex"
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()


# --- route actions ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RegexRewrite:
    pattern: Any                                # compiled RE2 pattern
    substitution: str                           # RE2 syntax: \1 for groups


@dataclass(frozen=True, slots=True)
class WeightedClusterEntry:
    name: str
    weight: int
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    host_rewrite_literal: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's (else its virtual host's) retry_policy, with the virtual host's attempt
    count options folded in: a route whose virtual host only asks for
    x-envoy-attempt-count gets a policy with no ``retry_on`` (one attempt)."""

    retry_on: frozenset[str] = frozenset()      # Envoy's tokens: "5xx", "reset", "cancelled", ...
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    base_interval_ms: int = 25
    max_interval_ms: int = 250                  # Envoy's default: 10 x base_interval
    previous_hosts: bool = False                # retry_host_predicate previous_hosts
    host_selection_retry_max_attempts: int = 1
    buffer_limit: int | None = None             # per_request_buffer_limit_bytes (route, else vhost)
    include_attempt_count_in_response: bool = False
    include_request_attempt_count: bool = False


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One RouteAction.hash_policy entry (filters/http/router/hash_policy.py evaluates them)."""

    kind: str                                   # header | cookie | source_ip | query_parameter
    name: str = ""                              # header (lower-case), cookie or parameter name
    regex_rewrite: RegexRewrite | None = None   # header only
    cookie_ttl: int | None = None               # whole seconds; set: generate a missing cookie
    cookie_path: str = ""
    cookie_attributes: tuple[tuple[str, str], ...] = ()
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Forward to a cluster (one, or a weighted split)."""

    cluster: str | None = None
    cluster_header: str | None = None
    weighted_clusters: tuple[WeightedClusterEntry, ...] = ()
    total_weight: int = 0
    cluster_not_found_response_code: int = 503
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: str | None = None
    auto_host_rewrite: bool = False
    timeout: float | None = 15.0                # Envoy's default; None = disabled
    retry_policy: RetryPolicy | None = None     # None: one attempt, no attempt count headers
    hash_policy: tuple[HashPolicy, ...] = ()    # for RING_HASH / MAGLEV clusters
    mirror_policies: tuple[MirrorPolicy, ...] = ()   # request_mirror_policies
    # max_stream_duration: the stream's limit (None: none); with grpc_timeout_header_max set
    # (0: no cap) a request's grpc-timeout header, capped, less the offset, replaces it.
    max_stream_duration: float | None = None
    grpc_timeout_header_max: float | None = None
    grpc_timeout_header_offset: float = 0.0
    # upgrade_configs: (lower-case upgrade type, enabled), overriding the connection manager's
    upgrade_configs: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """One request_mirror_policies entry: a shadow copy of the request to another cluster."""

    cluster: str | None = None
    cluster_header: str | None = None           # the cluster named by this request header
    numerator: int = 100                        # runtime_fraction: mirror numerator/denominator
    denominator: int = 100
    disable_shadow_host_suffix_append: bool = False


@dataclass(frozen=True, slots=True)
class RedirectAction:
    scheme: str | None = None                   # https_redirect sets "https"
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    response_code: int = 301
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    status: int
    body: bytes | None = None


Action = Union[RouteAction, RedirectAction, DirectResponseAction]


class FilterDisabled:
    """The value of a typed_per_filter_config entry that is ``FilterConfig{disabled: true}``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FILTER_DISABLED"


FILTER_DISABLED = FilterDisabled()

# typed_per_filter_config of one level (route, virtual host, route config): the
# filter config name and what that filter's factory parsed (or FILTER_DISABLED),
# sorted by name.
PerFilterConfigs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Route:
    match: RouteMatch
    action: Action
    name: str = ""
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    typed_per_filter_config: PerFilterConfigs = ()
    per_request_buffer_limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    typed_per_filter_config: PerFilterConfigs = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    request_headers: HeaderMutations | None = None
    response_headers: HeaderMutations | None = None
    typed_per_filter_config: PerFilterConfigs = ()


# --- network filters ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Http2ProtocolOptions:
    """The downstream HTTP/2 settings and flood limits of an http_connection_manager
    (http2_protocol_options); the defaults are Envoy's."""
    max_concurrent_streams: int = 2147483647
    initial_stream_window_size: int = 268435456
    initial_connection_window_size: int = 268435456
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10


@dataclass(frozen=True, slots=True)
class HttpFilterConfig:
    """One entry of http_filters: the Envoy name and its parsed config."""

    name: str
    type_url: str
    config: Any = None
    is_optional: bool = False
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class AccessLog:
    """A file or stdout/stderr access log: where, and the parsed format (config.access_format)."""

    path: str                                   # "/dev/stdout" for the stdout logger
    tokens: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    stat_prefix: str
    route_config: RouteConfig | None            # None: the route config comes over RDS
    http_filters: tuple[HttpFilterConfig, ...]
    rds_route_config_name: str = ""             # set with route_config None
    rds_config_source: ConfigSource | None = None
    codec_type: str = "AUTO"                    # AUTO | HTTP1 | HTTP2
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    server_name: str = "envoy"
    # OVERWRITE | APPEND_IF_ABSENT | PASS_THROUGH
    server_header_transformation: str = "OVERWRITE"
    max_request_headers_kb: int = 60
    max_headers_count: int = 100
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    stream_idle_timeout: float | None = 300.0
    request_timeout: float | None = None
    request_headers_timeout: float | None = None
    idle_timeout: float | None = 3600.0         # common_http_protocol_options.idle_timeout
    drain_timeout: float = 5.0
    max_requests_per_connection: int = 0
    suppress_envoy_headers: bool = False        # from the router filter's config
    access_logs: tuple[AccessLog, ...] = ()
    http2: Http2ProtocolOptions = Http2ProtocolOptions()
    # upgrade_configs: (lower-case upgrade type, enabled); a route may override "enabled"
    upgrade_configs: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True, slots=True)
class TcpProxy:
    stat_prefix: str
    cluster: str | None = None
    weighted_clusters: tuple[tuple[str, int], ...] = ()
    idle_timeout: float | None = 3600.0         # Envoy's default: 1 hour


NetworkFilter = Union[HttpConnectionManager, TcpProxy]


@dataclass(frozen=True, slots=True)
class FilterChainMatch:
    """filter_chain_match (sidecar/listener/chain_match.py): prefixes are ipaddress networks."""
    destination_port: int | None = None
    prefix_ranges: tuple[Any, ...] = ()
    source_prefix_ranges: tuple[Any, ...] = ()
    source_ports: frozenset[int] = frozenset()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FilterChain:
    name: str
    filter: NetworkFilter
    match: FilterChainMatch | None = None


@dataclass(frozen=True, slots=True)
class ListenerFilterPredicate:
    """ListenerFilterChainMatchPredicate (a listener filter's filter_disabled)."""
    kind: str                                   # "any" | "or" | "and" | "not" | "port"
    children: tuple[ListenerFilterPredicate, ...] = ()
    port_start: int = 0                         # destination_port_range [start, end)
    port_end: int = 0


@dataclass(frozen=True, slots=True)
class ListenerFilter:
    """A listener filter: envoy.filters.listener.original_dst | http_inspector | tls_inspector."""
    kind: str                                   # "original_dst" | "http_inspector" | "tls_inspector"
    name: str = ""
    disabled: ListenerFilterPredicate | None = None     # filter_disabled: skip it when true


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: SocketAddress
    filter_chain: FilterChain                   # the only chain (or the first, or the default)
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    bind_to_port: bool = True
    stat_prefix: str = ""
    # Several chains / listener filters (sidecar/listener/accept.py); empty: one chain, fast path.
    filter_chains: tuple[FilterChain, ...] = ()
    default_filter_chain: FilterChain | None = None
    listener_filters: tuple[ListenerFilter, ...] = ()
    listener_filters_timeout: float | None = 15.0
    continue_on_listener_filters_timeout: bool = False
    use_original_dst: bool = False

    @property
    def needs_accept_stage(self) -> bool:
        """Whether a connection needs listener filters or chain matching before its chain."""
        return bool(self.listener_filters or self.filter_chains or self.use_original_dst)


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


# --- bootstrap -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GrpcService:
    """An xDS management server and the variant it speaks (ads_config or an api_config_source)."""
    delta: bool                                 # DELTA_GRPC (else GRPC, State of the World)
    cluster_name: str = ""                      # envoy_grpc: a static cluster
    target_uri: str = ""                        # google_grpc
    set_node_on_first_message_only: bool = False


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where one resource type comes from: the ADS stream, its own gRPC stream, or a file."""
    ads: bool = False
    grpc: GrpcService | None = None             # api_config_source (non-aggregated)
    path: str = ""                              # path_config_source: a DiscoveryResponse file


@dataclass(frozen=True, slots=True)
class DynamicResources:
    ads: GrpcService | None                     # ads_config
    lds: ConfigSource | None
    cds: ConfigSource | None
    # How long start-up waits for the first LDS and CDS answers (the larger of the
    # two sources' initial_fetch_timeout; Envoy's default 15 s; 0 waits forever).
    initial_fetch_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class Node:
    id: str = ""
    cluster: str = ""
    zone: str = ""
    region: str = ""
    sub_zone: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Admin:
    address: SocketAddress


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole, validated config: what the runtime swaps atomically."""

    node: Node
    admin: Admin | None
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    dynamic: DynamicResources | None = None

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None


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
