"""Envoy protobuf -> frozen model: the bootstrap, listeners and network filters.

With translate_routes.py and translate_clusters.py, the only modules that read
protobuf messages.

Every message is checked against the fields we implement: a field that is set
but not supported is an error naming its path (never silently ignored).  All
errors in a config are collected, so ``--mode validate`` can list them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from config import model
from config.access_format import DEFAULT_FORMAT, parse_format
from config.errors import ConfigError, ConfigErrors
from config.translate_base import FilterParserLookup, each, optional_timeout, seconds, wrapped
from config.translate_clusters import ClusterTranslator
from config.translate_http2 import Http2OptionsTranslator
from config.translate_listener_match import ListenerMatchTranslator
from config.translate_routes import RouteTranslator, route_cluster_names

log = logging.getLogger(__name__)

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


class Translator(RouteTranslator, ClusterTranslator, Http2OptionsTranslator, ListenerMatchTranslator):
    # --- bootstrap ----------------------------------------------------------------

    def bootstrap(self, bs: Message) -> model.Snapshot | None:
        self.only(bs, "", ("node", "static_resources", "admin", "dynamic_resources"))
        node = self.node(bs.node, "node")
        admin = None
        if bs.HasField("admin"):
            self.only(bs.admin, "admin", ("address", "access_log", "access_log_path", "profile_path"))
            if bs.admin.HasField("address"):
                addr = self.socket_address(bs.admin.address, "admin.address")
                admin = model.Admin(addr) if addr else None
        sr = bs.static_resources
        self.only(sr, "static_resources", ("listeners", "clusters"))
        clusters = each(sr.clusters, "static_resources.clusters", self.cluster)
        listeners = each(sr.listeners, "static_resources.listeners", self.listener)
        self.unique((c.name for c in clusters), "static_resources.clusters", "cluster")
        self.unique((l.name for l in listeners), "static_resources.listeners", "listener")
        self.validate_route_clusters(sr.listeners, {c.name for c in clusters})
        by_name = {c.name: c for c in clusters}
        dynamic = None
        if bs.HasField("dynamic_resources"):
            dynamic = self.dynamic_resources(bs.dynamic_resources, "dynamic_resources", by_name)
        # Static EDS clusters and RDS listeners name their own config sources.
        sources = [c.eds_config_source for c in clusters if c.eds_config_source is not None]
        sources += [l.filter_chain.filter.rds_config_source for l in listeners
                    if isinstance(l.filter_chain.filter, model.HttpConnectionManager)
                    and l.filter_chain.filter.rds_config_source is not None]
        self.check_grpc_targets("static_resources", dynamic.ads if dynamic else None, sources, by_name)
        if self.errors:
            return None
        return model.Snapshot(node=node, admin=admin, listeners=tuple(listeners),
                              clusters=tuple(clusters), dynamic=dynamic)

    def dynamic_resources(self, dr: Message, path: str, static_clusters: dict[str, model.Cluster]
                          ) -> model.DynamicResources | None:
        self.only(dr, path, ("lds_config", "cds_config", "ads_config"))
        ads = None
        if dr.HasField("ads_config"):
            ads = self.grpc_service(dr.ads_config, f"{path}.ads_config")
        sources: dict[str, model.ConfigSource] = {}
        timeouts = []
        for field in ("lds_config", "cds_config"):
            if dr.HasField(field):
                sources[field] = self.config_source(getattr(dr, field), f"{path}.{field}", files=True)
                timeouts.append(optional_timeout(getattr(dr, field), "initial_fetch_timeout", 15.0))
        self.check_grpc_targets(path, ads, sources.values(), static_clusters)
        timeout = 0.0 if None in timeouts else max([t for t in timeouts if t is not None] or [15.0])
        return model.DynamicResources(ads=ads, lds=sources.get("lds_config"),
                                      cds=sources.get("cds_config"), initial_fetch_timeout=timeout)

    def check_grpc_targets(self, path: str, ads: model.GrpcService | None,
                           sources: Iterable[model.ConfigSource],
                           static_clusters: dict[str, model.Cluster]) -> None:
        """An envoy_grpc service must name a static cluster with an endpoint; ads needs ads_config."""
        services = [ads] + [s.grpc for s in sources]
        for service in services:
            if service is not None and service.cluster_name:
                cluster = static_clusters.get(service.cluster_name)
                if cluster is None or not cluster.endpoints:
                    self.error(path, f"gRPC service cluster {service.cluster_name!r} must be a "
                               "static cluster with an endpoint")
        if ads is None and any(s.ads for s in sources):
            self.error(f"{path}.ads_config", "an 'ads: {}' config source needs ads_config")

    def unique(self, names: Iterable[str], path: str, kind: str) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                self.error(path, f"duplicate {kind} name {name!r}")
            seen.add(name)

    def node(self, node: Message, path: str) -> model.Node:
        self.only(node, path, ("id", "cluster", "locality", "metadata", "user_agent_name",
                               "user_agent_version"))
        metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        return model.Node(id=node.id, cluster=node.cluster, zone=node.locality.zone,
                          region=node.locality.region, sub_zone=node.locality.sub_zone,
                          metadata=metadata)

    # --- listeners ----------------------------------------------------------------

    def listener(self, lst: Message, path: str) -> model.Listener | None:
        self.only(lst, path, ("name", "address", "filter_chains", "stat_prefix",
                              "per_connection_buffer_limit_bytes", "traffic_direction",
                              "bind_to_port", "metadata", "listener_filters",
                              "listener_filters_timeout", "continue_on_listener_filters_timeout",
                              "use_original_dst", "default_filter_chain"))
        if not lst.name:
            self.error(f"{path}.name", "a listener needs a name")
        address = self.socket_address(lst.address, f"{path}.address")
        if not lst.filter_chains and not lst.HasField("default_filter_chain"):
            self.error(f"{path}.filter_chains", "a listener needs a filter chain "
                       "(filter_chains or default_filter_chain)")
            return None
        errors = len(self.errors)
        chains = [self.filter_chain(fc, f"{path}.filter_chains[{i}]")
                  for i, fc in enumerate(lst.filter_chains)]
        default = None
        if lst.HasField("default_filter_chain"):
            default = self.filter_chain(lst.default_filter_chain, f"{path}.default_filter_chain")
            if default is not None and default.match is not None:
                self.error(f"{path}.default_filter_chain.filter_chain_match",
                           "the default filter chain takes no filter_chain_match")
        good = [c for c in chains if c is not None]
        extras = self.listener_extras(lst, path, good, default)
        if address is None or len(self.errors) > errors or not (good or default):
            return None
        return model.Listener(
            name=lst.name, address=address, filter_chain=good[0] if good else default,  # type: ignore[arg-type]
            per_connection_buffer_limit_bytes=wrapped(
                lst, "per_connection_buffer_limit_bytes", 1024 * 1024),
            bind_to_port=wrapped(lst, "bind_to_port", True),
            stat_prefix=lst.stat_prefix, **extras)

    def filter_chain(self, fc: Message, path: str) -> model.FilterChain | None:
        self.only(fc, path, ("filters", "name", "filter_chain_match"))
        match = None
        if fc.HasField("filter_chain_match"):
            match = self.filter_chain_match(fc.filter_chain_match, f"{path}.filter_chain_match")
            if match == model.FilterChainMatch():
                match = None        # an empty match is the catch-all, like no match at all
        if len(fc.filters) != 1:
            self.error(f"{path}.filters", "exactly one network filter (http_connection_manager "
                       f"or tcp_proxy) is supported, got {len(fc.filters)}")
            return None
        f, fpath = fc.filters[0], f"{path}.filters[0]"
        self.only(f, fpath, ("name", "typed_config"))
        if f.typed_config.type_url == HCM_TYPE:
            msg = self.unpack(f.typed_config, f"{fpath}.typed_config")
            nf: model.NetworkFilter | None = (
                self.http_connection_manager(msg, f"{fpath}.typed_config") if msg else None)
        elif f.typed_config.type_url == TCP_PROXY_TYPE:
            msg = self.unpack(f.typed_config, f"{fpath}.typed_config")
            nf = self.tcp_proxy(msg, f"{fpath}.typed_config") if msg else None
        else:
            self.error(fpath, f"network filter {f.name!r} "
                       f"({f.typed_config.type_url or 'no typed_config'}) is not supported")
            return None
        return model.FilterChain(fc.name, nf, match) if nf else None

    def tcp_proxy(self, tp: Message, path: str) -> model.TcpProxy | None:
        self.only(tp, path, ("stat_prefix", "cluster", "weighted_clusters", "idle_timeout"))
        if not tp.stat_prefix:
            self.error(f"{path}.stat_prefix", "value length must be at least 1 characters")
        weighted = tuple((c.name, c.weight) for c in tp.weighted_clusters.clusters)
        for i, c in enumerate(tp.weighted_clusters.clusters):
            self.only(c, f"{path}.weighted_clusters.clusters[{i}]", ("name", "weight"))
        if not tp.cluster and not weighted:
            self.error(path, "one of cluster or weighted_clusters is required")
        return model.TcpProxy(stat_prefix=tp.stat_prefix, cluster=tp.cluster or None,
                              weighted_clusters=weighted,
                              idle_timeout=optional_timeout(tp, "idle_timeout", 3600.0))

    def http_connection_manager(self, hcm: Message, path: str) -> model.HttpConnectionManager | None:
        self.only(hcm, path, (
            "codec_type", "stat_prefix", "route_config", "rds", "http_filters", "use_remote_address",
            "xff_num_trusted_hops", "skip_xff_append", "generate_request_id",
            "preserve_external_request_id", "server_name", "server_header_transformation",
            "max_request_headers_kb", "stream_idle_timeout", "request_timeout",
            "request_headers_timeout", "drain_timeout", "common_http_protocol_options",
            "http_protocol_options", "access_log", "http2_protocol_options", "upgrade_configs"))
        codec = {0: "AUTO", 1: "HTTP1", 2: "HTTP2"}.get(hcm.codec_type)
        if codec is None:
            self.error(f"{path}.codec_type", "only AUTO, HTTP1 and HTTP2 are supported yet")
            codec = "AUTO"
        if not hcm.stat_prefix:
            self.error(f"{path}.stat_prefix", "value length must be at least 1 characters")
        route_config: model.RouteConfig | None = None
        rds_name = ""
        rds_source = None
        if hcm.HasField("rds"):
            self.only(hcm.rds, f"{path}.rds", ("config_source", "route_config_name"))
            rds_source = self.config_source(hcm.rds.config_source, f"{path}.rds.config_source")
            rds_name = hcm.rds.route_config_name
            if not rds_name:
                self.error(f"{path}.rds.route_config_name", "value length must be at least 1 characters")
        elif hcm.HasField("route_config"):
            route_config = self.route_config(hcm.route_config, f"{path}.route_config")
        else:
            self.error(path, "one of route_config or rds is required")
            return None
        http_filters, suppress = self.http_filters(hcm.http_filters, f"{path}.http_filters")
        common = hcm.common_http_protocol_options
        self.only(common, f"{path}.common_http_protocol_options",
                  ("idle_timeout", "max_headers_count", "max_requests_per_connection"))
        h1 = hcm.http_protocol_options
        self.only(h1, f"{path}.http_protocol_options", ("accept_http_10", "default_host_for_http_10"))
        http2 = self.http2_options(hcm.http2_protocol_options, f"{path}.http2_protocol_options")
        kb = wrapped(hcm, "max_request_headers_kb", 60)
        if not 0 < kb <= 8192:
            self.error(f"{path}.max_request_headers_kb", "value must be in (0, 8192]")
        if route_config is None and not rds_name:
            return None
        return model.HttpConnectionManager(
            stat_prefix=hcm.stat_prefix, route_config=route_config, rds_route_config_name=rds_name,
            rds_config_source=rds_source,
            http_filters=http_filters, codec_type=codec,
            use_remote_address=wrapped(hcm, "use_remote_address", False),
            xff_num_trusted_hops=hcm.xff_num_trusted_hops,
            skip_xff_append=hcm.skip_xff_append,
            generate_request_id=wrapped(hcm, "generate_request_id", True),
            preserve_external_request_id=hcm.preserve_external_request_id,
            server_name=hcm.server_name or "envoy",
            server_header_transformation={0: "OVERWRITE", 1: "APPEND_IF_ABSENT",
                                          2: "PASS_THROUGH"}[hcm.server_header_transformation],
            max_request_headers_kb=kb,
            max_headers_count=wrapped(common, "max_headers_count", 100),
            accept_http_10=h1.accept_http_10,
            default_host_for_http_10=h1.default_host_for_http_10,
            stream_idle_timeout=optional_timeout(hcm, "stream_idle_timeout", 300.0),
            request_timeout=optional_timeout(hcm, "request_timeout", None),
            request_headers_timeout=optional_timeout(hcm, "request_headers_timeout", None),
            idle_timeout=optional_timeout(common, "idle_timeout", 3600.0),
            drain_timeout=seconds(hcm.drain_timeout) if hcm.HasField("drain_timeout") else 5.0,
            max_requests_per_connection=wrapped(common, "max_requests_per_connection", 0),
            suppress_envoy_headers=suppress,
            access_logs=tuple(each(hcm.access_log, f"{path}.access_log", self.access_log)),
            http2=http2,
            upgrade_configs=tuple(each(hcm.upgrade_configs, f"{path}.upgrade_configs",
                                       self.upgrade_config)))


    def access_log(self, entry: Message, path: str) -> model.AccessLog | None:
        """envoy.access_loggers.file / stdout / stderr with Envoy's text formats."""
        self.only(entry, path, ("name", "typed_config"))
        type_url = entry.typed_config.type_url
        config = self.unpack(entry.typed_config, f"{path}.typed_config")
        if config is None:
            return None
        p = f"{path}.typed_config"
        if type_url == FILE_ACCESS_LOG_TYPE:
            self.only(config, p, ("path", "format", "log_format"))
            target = config.path
            if not target:
                self.error(f"{p}.path", "value length must be at least 1 characters")
        elif type_url in (STDOUT_ACCESS_LOG_TYPE, STDERR_ACCESS_LOG_TYPE):
            self.only(config, p, ("log_format",))
            target = "/dev/stdout" if type_url == STDOUT_ACCESS_LOG_TYPE else "/dev/stderr"
        else:
            self.error(p, f"access logger {entry.name!r} ({type_url}) is not supported")
            return None
        fmt = DEFAULT_FORMAT
        if getattr(config, "format", ""):
            fmt = config.format
        if config.HasField("log_format"):
            lf = config.log_format
            self.only(lf, f"{p}.log_format", ("text_format", "text_format_source"))
            if lf.WhichOneof("format") == "text_format":
                fmt = lf.text_format
            elif lf.WhichOneof("format") == "text_format_source":
                fmt = (self.data_source(lf.text_format_source, f"{p}.log_format.text_format_source")
                       or b"").decode()
        try:
            tokens = parse_format(fmt)
        except ValueError as e:
            self.error(f"{p}.log_format", str(e))
            return None
        return model.AccessLog(target, tokens)

    def http_filters(self, filters: Any, path: str) -> tuple[tuple[model.HttpFilterConfig, ...], bool]:
        """Parse http_filters; the list must end with the router (returns its suppress flag)."""
        out: list[model.HttpFilterConfig] = []
        suppress = False
        if not filters:
            self.error(path, "http_filters must end with envoy.filters.http.router")
        for i, f in enumerate(filters):
            p = f"{path}[{i}]"
            self.only(f, p, ("name", "typed_config", "is_optional", "disabled"))
            type_url = f.typed_config.type_url
            parse = self.lookup_http_filter(f.name, type_url)
            if parse is None:
                if f.is_optional:
                    self.warnings.append(f"{p}: optional HTTP filter {f.name!r} is not "
                                         "implemented; skipped")
                    continue
                self.error(p, f"HTTP filter {f.name!r} ({type_url or 'no typed_config'}) "
                           "is not supported by sidecar")
                continue
            config = None
            if f.HasField("typed_config"):
                msg = self.unpack(f.typed_config, f"{p}.typed_config")
                if msg is None:
                    continue
                try:
                    config = parse(msg, f"{p}.typed_config")
                except ConfigError as e:
                    self.errors.append(e)
                    continue
            out.append(model.HttpFilterConfig(name=f.name, type_url=type_url, config=config,
                                              is_optional=f.is_optional, disabled=f.disabled))
        if filters and not (out and out[-1].name in ("envoy.filters.http.router", "envoy.router")
                            or (out and out[-1].type_url.endswith(".router.v3.Router"))):
            self.error(path, "the last HTTP filter must be the router (envoy.filters.http.router)")
        if out and out[-1].config is not None:
            suppress = bool(getattr(out[-1].config, "suppress_envoy_headers", False))
        return tuple(out), suppress

    def validate_route_clusters(self, listeners: Any, cluster_names: set[str]) -> None:
        """Envoy's validate_clusters (default true for inline route tables)."""
        for li, lst in enumerate(listeners):
            chains = [(f"filter_chains[{ci}]", fc) for ci, fc in enumerate(lst.filter_chains)]
            if lst.HasField("default_filter_chain"):
                chains.append(("default_filter_chain", lst.default_filter_chain))
            for cpath, fc in chains:
                for fi, f in enumerate(fc.filters):
                    path = f"static_resources.listeners[{li}].{cpath}.filters[{fi}]"
                    if f.typed_config.type_url == TCP_PROXY_TYPE:
                        tp = self.unpack(f.typed_config, path)
                        names = [tp.cluster] if tp and tp.cluster else []
                        names += [c.name for c in tp.weighted_clusters.clusters] if tp else []
                        for name in names:
                            if name not in cluster_names:
                                self.error(f"{path}.typed_config", f"unknown cluster {name!r}")
                    elif f.typed_config.type_url == HCM_TYPE:
                        hcm = self.unpack(f.typed_config, path)
                        if hcm is None or not wrapped(hcm.route_config, "validate_clusters", True):
                            continue
                        for name, kind in route_cluster_names(hcm.route_config):
                            if name not in cluster_names:
                                self.error(f"{path}.typed_config.route_config",
                                           f"route: unknown {kind} '{name}'")



def translate_bootstrap(bootstrap: Message, lookup_http_filter: FilterParserLookup
                        ) -> tuple[model.Snapshot, list[str]]:
    """Bootstrap protobuf -> Snapshot, or ConfigErrors listing every problem found."""
    t = Translator(lookup_http_filter)
    snapshot = t.bootstrap(bootstrap)
    if snapshot is None:
        raise ConfigErrors(t.errors or [ConfigError("", "invalid config")])
    return snapshot, t.warnings
