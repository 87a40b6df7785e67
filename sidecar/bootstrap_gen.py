"""``sidecar bootstrap``: an Envoy v3 bootstrap built from environment variables and flags.

What Istio's pilot-agent does before it starts Envoy, without the agent: the node
(id, cluster, metadata, locality) comes from the pod's environment with Istio's
variable names, the config from ADS over gRPC to the static cluster ``xds-grpc``,
and the bootstrap has Istio's fixed parts: admin on 127.0.0.1:15000, Prometheus
metrics on :15090 (``/stats/prometheus``, routed to the admin through the static
cluster ``prometheus_stats``, as in Istio's envoy_bootstrap.json) and readiness
on :15021 (``/healthz/ready``). The output is plain Envoy config: ``envoy -c``
runs it as well as ``sidecar -c``.

One deliberate change from Istio: Istio routes ``/healthz/ready`` to pilot-agent
(cluster ``agent``, :15020), which then asks Envoy. There is no agent here, so
the route goes straight to the admin's ``/ready`` (prefix_rewrite), which answers
200 ``LIVE`` once the proxy is initialized and 503 before that and while
draining. docs/docker-compose.md lists the variables read.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_XDS_ADDRESS = "istiod.istio-system.svc:15010"   # istiod's plaintext gRPC xDS port
DEFAULT_DOMAIN_SUFFIX = "cluster.local"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ISTIO_META = "ISTIO_META_"
ISTIO_METAJSON = "ISTIO_METAJSON_"
LOCALITY_LABEL = "istio-locality"      # Istio's label: "region.zone.subzone" or "region/zone/subzone"


class BootstrapError(Exception):
    """A variable or flag that cannot make a valid bootstrap; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the bootstrap depends on, after environment and flags are merged."""
    node_id: str
    cluster: str
    metadata: dict[str, Any]
    xds_host: str
    xds_port: int
    delta: bool = True
    locality: dict[str, str] = field(default_factory=dict)
    admin_port: int = 15000
    prometheus_port: int = 15090
    status_port: int = 15021
    ipv6: bool = False                   # every instance IP is IPv6: listen on :: and use ::1
    initial_fetch_timeout: str = "0s"    # Istio's: wait for the first LDS/CDS however long it takes
    connect_timeout: str = "1s"


# ---- environment -> settings -------------------------------------------------------------------

def _split_address(value: str, origin: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BootstrapError(f"{origin}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _proxy_config(env: Mapping[str, str]) -> dict[str, Any]:
    """Istio's PROXY_CONFIG variable: a ProxyConfig in YAML or JSON (discoveryAddress, ...)."""
    raw = env.get("PROXY_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise BootstrapError(f"PROXY_CONFIG: not YAML or JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise BootstrapError("PROXY_CONFIG: must be a mapping (a ProxyConfig)")
    return parsed


def _local_ips() -> list[str]:
    """The host's addresses as pilot-agent finds them when INSTANCE_IP is unset (non-loopback)."""
    found: list[str] = []
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0])
        if not ipaddress.ip_address(ip).is_loopback and ip not in found:
            found.append(ip)
    return found or ["127.0.0.1"]


def _metadata_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """ISTIO_META_X=v becomes metadata X: "v"; ISTIO_METAJSON_* values are JSON objects merged
    in (ISTIO_METAJSON_LABELS sets LABELS), as pilot-agent's GetNodeMetaData does."""
    meta: dict[str, Any] = {}
    for name in sorted(env):
        if name.startswith(ISTIO_META) and len(name) > len(ISTIO_META):
            meta[name[len(ISTIO_META):]] = env[name]
    for name in sorted(env):
        if not name.startswith(ISTIO_METAJSON) or len(name) == len(ISTIO_METAJSON):
            continue
        try:
            value = json.loads(env[name])
        except ValueError as e:
            raise BootstrapError(f"{name}: not JSON: {e}") from None
        if not isinstance(value, dict):
            raise BootstrapError(f"{name}: must be a JSON object")
        if name == "ISTIO_METAJSON_LABELS":
            if not all(isinstance(v, str) for v in value.values()):
                raise BootstrapError(f"{name}: label values must be strings")
            meta["LABELS"] = value
        else:
            meta.update(value)
    return meta


def _locality(labels: Mapping[str, str]) -> dict[str, str]:
    raw = labels.get(LOCALITY_LABEL, "")
    parts = raw.replace(".", "/").split("/") if raw else []
    return {k: v for k, v in zip(("region", "zone", "sub_zone"), parts) if v}


def _service_cluster(explicit: str, meta: Mapping[str, Any], namespace: str) -> str:
    """Istio's serviceClusterOrDefault: the app label or the workload name, dot namespace."""
    if explicit and explicit != "istio-proxy":
        return explicit
    labels = meta.get("LABELS") or {}
    if "app" in labels:
        return f"{labels['app']}.{namespace}"
    if meta.get("WORKLOAD_NAME"):
        return f"{meta['WORKLOAD_NAME']}.{namespace}"
    return f"istio-proxy.{namespace}" if namespace else "istio-proxy"


def _port(value: Any, origin: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise BootstrapError(f"{origin}: {value!r} is not a port number") from None
    if not 0 <= port < 65536:
        raise BootstrapError(f"{origin}: {port} is not a port number")
    return port


def _bool_env(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "t", "true", "yes", "on"):         # Go's strconv.ParseBool, and yes/on
        return True
    if raw in ("0", "f", "false", "no", "off"):
        return False
    raise BootstrapError(f"{name}: {raw!r} is not true or false")


def settings_from(env: Mapping[str, str], args: argparse.Namespace) -> Settings:
    """Merge flags (first), our variables, then Istio's, then defaults."""
    proxy_config = _proxy_config(env)
    if args.xds_address:
        xds = _split_address(args.xds_address, "--xds-address")
    elif env.get("XDS_ADDRESS"):
        xds = _split_address(env["XDS_ADDRESS"], "XDS_ADDRESS")
    elif proxy_config.get("discoveryAddress"):
        xds = _split_address(str(proxy_config["discoveryAddress"]), "PROXY_CONFIG.discoveryAddress")
    else:
        xds = _split_address(DEFAULT_XDS_ADDRESS, "default")
    delta = (args.xds_type == "delta") if args.xds_type else _bool_env(env, "ISTIO_DELTA_XDS", True)

    namespace = env.get("POD_NAMESPACE") or "default"
    pod_name = env.get("POD_NAME") or socket.gethostname()
    ips = [ip.strip() for ip in (env.get("INSTANCE_IP") or "").split(",") if ip.strip()]
    if not ips:
        ips = _local_ips()
    for ip in ips:
        if not _is_ip(ip):
            raise BootstrapError(f"INSTANCE_IP: {ip!r} is not an IP address")
    domain = f"{namespace}.svc.{env.get('DOMAIN_SUFFIX') or DEFAULT_DOMAIN_SUFFIX}"
    node_id = args.node_id or f"{args.proxy_type}~{ips[0]}~{pod_name}.{namespace}~{domain}"

    meta = _metadata_from_env(env)
    # What pilot-agent itself adds (istiod reads these); explicit ISTIO_META_* do not override.
    meta.setdefault("NAMESPACE", namespace)
    meta.setdefault("NAME", pod_name)
    meta.setdefault("INSTANCE_IPS", ",".join(ips))
    if env.get("SERVICE_ACCOUNT"):
        meta.setdefault("SERVICE_ACCOUNT", env["SERVICE_ACCOUNT"])
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BootstrapError(f"--metadata: {item!r} is not KEY=VALUE")
        meta[key] = value

    cluster = args.service_cluster or _service_cluster(
        str(proxy_config.get("serviceCluster") or ""), meta, namespace)
    admin_port = args.admin_port if args.admin_port is not None else _port(
        proxy_config.get("proxyAdminPort", 15000), "PROXY_CONFIG.proxyAdminPort")
    labels = meta.get("LABELS") or {}
    return Settings(
        node_id=node_id, cluster=cluster, metadata=meta, xds_host=xds[0], xds_port=xds[1],
        delta=delta, locality=_locality(labels), admin_port=admin_port,
        prometheus_port=args.prometheus_port, status_port=args.status_port,
        ipv6=all(ipaddress.ip_address(ip).version == 6 for ip in ips),
        initial_fetch_timeout=args.initial_fetch_timeout)


# ---- settings -> bootstrap ---------------------------------------------------------------------

def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _static_cluster(name: str, address: str, port: int, connect_timeout: str) -> dict[str, Any]:
    # A hostname (a compose service name, istiod's DNS name) needs STRICT_DNS; an IP is STATIC.
    return {
        "name": name,
        "type": "STATIC" if _is_ip(address) else "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _socket(address, port)}}]}]},
    }


def _admin_listener(name: str, address: str, port: int, stat_prefix: str,
                    route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": _socket(address, port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "codec_type": "AUTO",
                "stat_prefix": stat_prefix,
                "route_config": {"virtual_hosts": [
                    {"name": "backend", "domains": ["*"], "routes": [route]}]},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER_TYPE}}],
            },
        }]}],
    }


def build_bootstrap(s: Settings) -> dict[str, Any]:
    """The bootstrap as a dict, in Envoy's field names (snake_case), ready for YAML or JSON."""
    localhost, wildcard = ("::1", "::") if s.ipv6 else ("127.0.0.1", "0.0.0.0")
    ads_source = {"ads": {}, "initial_fetch_timeout": s.initial_fetch_timeout,
                  "resource_api_version": "V3"}
    node: dict[str, Any] = {"id": s.node_id, "cluster": s.cluster, "metadata": s.metadata}
    if s.locality:
        node["locality"] = dict(s.locality)
    xds = _static_cluster("xds-grpc", s.xds_host, s.xds_port, s.connect_timeout)
    if xds["type"] == "STRICT_DNS":
        # Istio's choice by the pod's IP family: Envoy's default (AUTO) would try IPv6 first and
        # miss a control plane that listens on IPv4 only (`localhost` -> ::1).
        xds["dns_lookup_family"] = "V6_ONLY" if s.ipv6 else "V4_ONLY"
    # gRPC needs HTTP/2; Istio also lifts the circuit breakers on its one xDS connection.
    xds["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}}
    xds["circuit_breakers"] = {"thresholds": [
        {"priority": p, "max_connections": 100000, "max_pending_requests": 100000,
         "max_requests": 100000} for p in ("DEFAULT", "HIGH")]}
    return {
        "node": node,
        "admin": {"address": _socket(localhost, s.admin_port)},
        "dynamic_resources": {
            "lds_config": dict(ads_source),
            "cds_config": dict(ads_source),
            "ads_config": {
                "api_type": "DELTA_GRPC" if s.delta else "GRPC",
                "set_node_on_first_message_only": True,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
        },
        "static_resources": {
            "clusters": [
                # The admin, reached through a cluster so the metrics and readiness ports can
                # listen on every address while the admin itself stays on loopback.
                _static_cluster("prometheus_stats", localhost, s.admin_port, "0.250s"),
                xds,
            ],
            "listeners": [
                _admin_listener("prometheus_stats", wildcard, s.prometheus_port, "stats",
                                {"match": {"prefix": "/stats/prometheus"},
                                 "route": {"cluster": "prometheus_stats"}}),
                _admin_listener("status", wildcard, s.status_port, "agent",
                                {"match": {"prefix": "/healthz/ready"},
                                 "route": {"cluster": "prometheus_stats", "prefix_rewrite": "/ready"}}),
            ],
        },
    }


def render(bootstrap: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(bootstrap, indent=2) + "\n"
    return str(yaml.dump(bootstrap, Dumper=_NoAliases, sort_keys=False, default_flow_style=False))


class _NoAliases(yaml.SafeDumper):
    """Write repeated sub-objects out in full: anchors (&id001) are legal YAML but confuse readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# ---- command line ------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sidecar bootstrap",
        description="Write an Envoy v3 bootstrap from environment variables (Istio's names) and "
                    "flags: ADS to the static cluster xds-grpc, admin on 127.0.0.1:15000, "
                    "Prometheus on :15090, readiness on :15021.",
        epilog="With --run, the bootstrap is not written out but run: sidecar starts on it, "
               "and arguments after -- go to sidecar (e.g. -- -l debug).")
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.add_argument("--format", choices=("yaml", "json"),
                   help="output format (default: json for a .json file, else yaml)")
    p.add_argument("--xds-address", default="",
                   help=f"control plane HOST:PORT (env XDS_ADDRESS, PROXY_CONFIG discoveryAddress; "
                        f"default {DEFAULT_XDS_ADDRESS})")
    p.add_argument("--xds-type", choices=("delta", "sotw"),
                   help="ADS variant (env ISTIO_DELTA_XDS=true|false; default delta)")
    p.add_argument("--node-id", default="", help="node.id (default: Istio's "
                   "TYPE~INSTANCE_IP~POD_NAME.POD_NAMESPACE~POD_NAMESPACE.svc.cluster.local)")
    p.add_argument("--proxy-type", choices=("sidecar", "router"), default="sidecar",
                   help="first part of the node id (router for gateways)")
    p.add_argument("--service-cluster", default="",
                   help="node.cluster (default: app label or workload name, dot namespace)")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                   help="extra node metadata (repeatable; overrides the environment)")
    p.add_argument("--admin-port", type=int, default=None,
                   help="admin port on loopback (PROXY_CONFIG proxyAdminPort; default 15000)")
    p.add_argument("--prometheus-port", type=int, default=15090)
    p.add_argument("--status-port", type=int, default=15021, help="readiness port")
    p.add_argument("--initial-fetch-timeout", default="0s",
                   help="how long to wait for the first listeners and clusters before going LIVE "
                        "(default 0s: until they arrive, as Istio)")
    p.add_argument("--run", action="store_true",
                   help="start sidecar on the generated bootstrap instead of writing it")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    own, rest = _split_at_dashes(argv)
    args = parse_args(own)
    if rest and not args.run:
        print("sidecar bootstrap: arguments after -- need --run", file=sys.stderr)
        return 2
    for flag, port in (("--admin-port", args.admin_port), ("--prometheus-port", args.prometheus_port),
                       ("--status-port", args.status_port)):
        if port is not None and not 0 <= port < 65536:
            print(f"sidecar bootstrap: {flag}: {port} is not a port number", file=sys.stderr)
            return 2
    if not re.fullmatch(r"\d+(\.\d{1,9})?s", args.initial_fetch_timeout):
        print(f"sidecar bootstrap: --initial-fetch-timeout: {args.initial_fetch_timeout!r} is not "
              "a duration like 0s or 1.5s", file=sys.stderr)
        return 2
    try:
        bootstrap = build_bootstrap(settings_from(os.environ, args))
    except BootstrapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fmt = args.format or ("json" if args.output.endswith(".json") else "yaml")
    text = render(bootstrap, fmt)
    if args.run:
        # The bootstrap goes to sidecar as --config-yaml (JSON is YAML): no file to write, so
        # the container's root filesystem can stay read-only.
        from sidecar.__main__ import main as sidecar_main
        return sidecar_main(["--config-yaml", render(bootstrap, "json"), *rest])
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


def _split_at_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []
