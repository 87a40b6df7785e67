"""The listener model: listeners, filter chains, listener filters, and the network filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from config.model_core import ConfigSource, SocketAddress
from config.model_routes import RouteConfig


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
