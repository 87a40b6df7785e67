"""The frozen config model the runtime reads: listeners, routes, clusters, endpoints.

Built only by ``config.translate`` from Envoy's protobuf messages; nothing on
the hot path touches protobuf.  Durations are float seconds, ``None`` meaning
"disabled".  Every object is immutable: a new config is a new object graph.

The classes live in one module per area; this module is the one import point
(``from config import model``; ``model.RouteAction``), re-exporting the same
class objects, so ``isinstance`` and ``type(x) is model.X`` hold either way:

- ``config.model_core``: shared pieces (addresses, header mutations, config sources)
- ``config.model_routes``: route configs, virtual hosts, routes, matches, actions
- ``config.model_listeners``: listeners, filter chains, network and listener filters
- ``config.model_clusters``: clusters, endpoints, outlier detection, health checks
- ``config.model_bootstrap``: node, admin, dynamic resources, Snapshot
"""

from __future__ import annotations

from config.model_bootstrap import (
    Admin, DynamicResources, Node, Snapshot,
)
from config.model_clusters import (
    AssignmentPolicy, Cluster, DEFAULT_ASSIGNMENT_POLICY, Endpoint, GrpcHealthCheck,
    HealthCheck, HttpHealthCheck, Locality, NO_LOCALITY, OriginalDst, OutlierDetection,
    TcpHealthCheck, UpstreamHttp2,
)
from config.model_core import (
    ConfigSource, GrpcService, HeaderMutations, HeaderValueOption, SocketAddress,
)
from config.model_listeners import (
    AccessLog, FilterChain, FilterChainMatch, Http2ProtocolOptions, HttpConnectionManager,
    HttpFilterConfig, Listener, ListenerFilter, ListenerFilterPredicate, NetworkFilter,
    TcpProxy,
)
from config.model_routes import (
    Action, DirectResponseAction, FILTER_DISABLED, FilterDisabled, HashPolicy, HeaderMatcher,
    MirrorPolicy, PerFilterConfigs, QueryParameterMatcher, RedirectAction, RegexRewrite,
    RetryPolicy, Route, RouteAction, RouteConfig, RouteMatch, VirtualHost,
    WeightedClusterEntry,
)

__all__ = [
    # config.model_core
    "SocketAddress", "HeaderValueOption", "HeaderMutations", "GrpcService", "ConfigSource",
    # config.model_routes
    "HeaderMatcher", "QueryParameterMatcher", "RouteMatch", "RegexRewrite",
    "WeightedClusterEntry", "RetryPolicy", "HashPolicy", "RouteAction", "MirrorPolicy",
    "RedirectAction", "DirectResponseAction", "Action", "FilterDisabled", "FILTER_DISABLED",
    "PerFilterConfigs", "Route", "VirtualHost", "RouteConfig",
    # config.model_listeners
    "Http2ProtocolOptions", "HttpFilterConfig", "AccessLog", "HttpConnectionManager",
    "TcpProxy", "NetworkFilter", "FilterChainMatch", "FilterChain", "ListenerFilterPredicate",
    "ListenerFilter", "Listener",
    # config.model_clusters
    "Locality", "AssignmentPolicy", "NO_LOCALITY", "DEFAULT_ASSIGNMENT_POLICY", "Endpoint",
    "UpstreamHttp2", "Cluster", "OriginalDst", "OutlierDetection", "HttpHealthCheck",
    "TcpHealthCheck", "GrpcHealthCheck", "HealthCheck",
    # config.model_bootstrap
    "DynamicResources", "Node", "Admin", "Snapshot",
]
