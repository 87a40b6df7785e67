"""An Istio-shaped sidecar bootstrap for the interception tests (the same file for Envoy).

    0.0.0.0:15001 / [::]:15001  virtualOutbound: original_dst, use_original_dst; a connection
                                to 15001 itself goes to the BlackHoleCluster (Istio's guard),
                                anything else with no port listener to PassthroughCluster
    <remote>:9002 (virtual)     tcp_proxy to <remote>:9000 (0.0.0.0:9002, also virtual, would
                                blackhole: the exact address wins)
    0.0.0.0:8080 (virtual)      outbound HTTP: Host a.svc / b.svc to backend clusters, any other
                                host passes through (HTTP to the ORIGINAL_DST cluster)
    [::]:15006 (dual-stack)     virtualInbound: original_dst + http_inspector; HTTP to the app
                                through an HCM, other bytes through tcp_proxy, both to
                                InboundPassthroughCluster (ORIGINAL_DST from 127.0.0.6 / ::6)
"""

from __future__ import annotations

from typing import Any

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LF = "type.googleapis.com/envoy.extensions.filters.listener."
ORIGINAL_DST = {"name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": LF + "original_dst.v3.OriginalDst"}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector",
                  "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}}


def addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def tcp(cluster: str, stat_prefix: str | None = None, **match: Any) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": stat_prefix or cluster, "cluster": cluster}}]}
    if match:
        chain["filter_chain_match"] = match
    return chain


ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = "%DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER%\n"


def http(stat_prefix: str, vhosts: list[dict[str, Any]], access_log: str | None = None,
         **match: Any) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": HCM, "stat_prefix": stat_prefix,
        "route_config": {"name": stat_prefix, "virtual_hosts": vhosts},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    if access_log:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": ACCESS_LOG, "path": access_log,
            "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}}}}]
    chain: dict[str, Any] = {"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if match:
        chain["filter_chain_match"] = match
    return chain


def vhost(name: str, domains: list[str], cluster: str) -> dict[str, Any]:
    return {"name": name, "domains": domains,
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}


def static(name: str, host: str, port: int) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": addr(host, port)}}]}]}}


def original_dst(name: str, bind: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                           "connect_timeout": "1s"}
    if bind:
        out["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    return out


def mesh_bootstrap(remote: str, access_log: str | None = None) -> dict[str, Any]:
    outbound = [tcp("BlackHoleCluster", destination_port=15001), tcp("PassthroughCluster")]
    listeners = [
        {"name": "virtualOutbound", "address": addr("0.0.0.0", 15001), "use_original_dst": True,
         "listener_filters": [ORIGINAL_DST], "filter_chains": outbound},
        {"name": "virtualOutbound6", "address": addr("::", 15001), "use_original_dst": True,
         "listener_filters": [ORIGINAL_DST], "filter_chains": outbound},
        {"name": "0.0.0.0_8080", "address": addr("0.0.0.0", 8080), "bind_to_port": False,
         "filter_chains": [http("outbound_0.0.0.0_8080", [
             vhost("a", ["a.svc"], "backend-a"), vhost("b", ["b.svc"], "backend-b"),
             vhost("allow_any", ["*"], "PassthroughCluster")], access_log)]},
    ]
    # use_original_dst prefers the exact ip:port listener to the 0.0.0.0:port one.
    listeners += [
        {"name": f"{remote}_9002", "address": addr(remote, 9002), "bind_to_port": False,
         "filter_chains": [tcp("remote-9000", "exact_9002")]},
        {"name": "0.0.0.0_9002", "address": addr("0.0.0.0", 9002), "bind_to_port": False,
         "filter_chains": [tcp("BlackHoleCluster", "wildcard_9002")]},
        # a bound listener takes hand-offs too
        {"name": "0.0.0.0_15010", "address": addr("0.0.0.0", 15010),
         "filter_chains": [tcp("remote-9000", "bound_15010")]},
    ]
    # No blackhole chain here: only the sidecar's own-address guard stops a loop (sidecar only).
    listeners.append({"name": "unguarded", "address": addr("0.0.0.0", 15009),
                      "listener_filters": [ORIGINAL_DST], "filter_chains": [tcp("PassthroughCluster")]})
    # One dual-stack listener ([::] with ipv4_compat): IPv4 clients arrive IPv4-mapped, their
    # original destination is read with the IPv4 option, and the destination prefix picks the
    # passthrough cluster of their family.
    inbound: list[dict[str, Any]] = [tcp("BlackHoleCluster", "inbound_blackhole",
                                         destination_port=15006)]
    for prefix, suffix, cluster in (("0.0.0.0", "", "InboundPassthroughClusterIpv4"),
                                    ("::", "6", "InboundPassthroughClusterIpv6")):
        ranges = [{"address_prefix": prefix, "prefix_len": 0}]
        inbound += [http(f"inbound{suffix}", [vhost("inbound", ["*"], cluster)],
                         prefix_ranges=ranges, application_protocols=["http/1.1", "h2c"]),
                    tcp(cluster, f"inbound_tcp{suffix}", prefix_ranges=ranges)]
    listeners.append({
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "::", "port_value": 15006, "ipv4_compat": True}},
        "listener_filters": [ORIGINAL_DST, HTTP_INSPECTOR],
        "listener_filters_timeout": "0.5s", "continue_on_listener_filters_timeout": True,
        "filter_chains": inbound})
    clusters = [
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
        original_dst("PassthroughCluster"),
        original_dst("InboundPassthroughClusterIpv4", "127.0.0.6"),
        original_dst("InboundPassthroughClusterIpv6", "::6"),
        static("backend-a", remote, 8081),
        static("backend-b", remote, 8082),
        static("remote-9000", remote, 9000),
    ]
    return {"admin": {"address": addr("127.0.0.1", 15000)},
            "static_resources": {"listeners": listeners, "clusters": clusters}}
