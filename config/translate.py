"""Envoy protobuf -> frozen model: the only module that reads protobuf messages.

Every message is checked against the fields we implement: a field that is set
but not supported is an error naming its path (never silently ignored).  All
errors in a config are collected, so ``--mode validate`` can list them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from config import model
from config.access_format import DEFAULT_FORMAT, parse_format
from config.bootstrap import ensure_type_imported
from config.errors import ConfigError, ConfigErrors
from config.matchers import StringMatcher, compile_regex

log = logging.getLogger(__name__)

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager")
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILE_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"

# Looks up an HTTP filter by Envoy name / type URL; returns its parse(message, path)
# or None when we don't implement it.  Injected so config/ imports nothing of ours.
FilterParserLookup = Callable[[str, str], Callable[[Message, str], Any] | None]

REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}


def seconds(duration: Message) -> float:
    return duration.seconds + duration.nanos / 1e9


def optional_timeout(msg: Message, field: str, default: float | None) -> float | None:
    """A Duration field where unset means ``default`` and 0 means disabled (Envoy's rule)."""
    if not msg.HasField(field):
        return default
    value = seconds(getattr(msg, field))
    return value if value > 0 else None


def each(items: Iterable[Any], path: str, translate: Callable[[Any, str], Any]) -> list[Any]:
    """Translate every item of a repeated field; items that failed (None) are left out."""
    out = []
    for i, item in enumerate(items):
        result = translate(item, f"{path}[{i}]")
        if result is not None:
            out.append(result)
    return out


def wrapped(msg: Message, field: str, default: Any) -> Any:
    """Read a google.protobuf.*Value wrapper field."""
    return getattr(msg, field).value if msg.HasField(field) else default


class Translator:
    """Collects errors while walking the config; ``errors`` holds them all."""

    def __init__(self, lookup_http_filter: FilterParserLookup) -> None:
        self.lookup_http_filter = lookup_http_filter
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(path, message))

    def only(self, msg: Message, path: str, supported: Iterable[str]) -> None:
        """Reject every set field of ``msg`` that is not in ``supported``."""
        allowed = set(supported)
        for fd, _ in msg.ListFields():
            if fd.name not in allowed:
                self.error(f"{path}.{fd.name}" if path else fd.name,
                           "not supported by sidecar yet (see docs/compatibility.md)")

    def unpack(self, any_msg: Message, path: str) -> Message | None:
        """Unpack a google.protobuf.Any into its concrete message."""
        try:
            ensure_type_imported(any_msg.type_url, f"{path}.@type")
        except ConfigError as e:
            self.errors.append(e)
            return None
        from google.protobuf import symbol_database
        cls = symbol_database.Default().GetSymbol(any_msg.type_url.rsplit("/", 1)[-1])
        message = cls()
        if not any_msg.Unpack(message):
            self.error(path, f"cannot unpack {any_msg.type_url}")
            return None
        return message

    # --- bootstrap ----------------------------------------------------------------

    def bootstrap(self, bs: Message) -> model.Snapshot | None:
        self.only(bs, "", ("node", "static_resources", "admin"))
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
        if self.errors:
            return None
        return model.Snapshot(node=node, admin=admin, listeners=tuple(listeners),
                              clusters=tuple(clusters))

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

    def socket_address(self, address: Message, path: str) -> model.SocketAddress | None:
        self.only(address, path, ("socket_address",))
        if not address.HasField("socket_address"):
            self.error(path, "only socket_address is supported")
            return None
        sa = address.socket_address
        p = f"{path}.socket_address"
        self.only(sa, p, ("address", "port_value", "protocol", "ipv4_compat"))
        if sa.protocol != 0:
            self.error(f"{p}.protocol", "only TCP is supported")
        if not sa.address:
            self.error(f"{p}.address", "value length must be at least 1 characters")
        if sa.port_value > 65535:
            self.error(f"{p}.port_value", "value must be less than or equal to 65535")
        return model.SocketAddress(sa.address, sa.port_value, sa.ipv4_compat)

    # --- listeners ----------------------------------------------------------------

    def listener(self, lst: Message, path: str) -> model.Listener | None:
        self.only(lst, path, ("name", "address", "filter_chains", "stat_prefix",
                              "per_connection_buffer_limit_bytes", "traffic_direction",
                              "bind_to_port", "metadata"))
        if not lst.name:
            self.error(f"{path}.name", "a listener needs a name")
        address = self.socket_address(lst.address, f"{path}.address")
        if len(lst.filter_chains) != 1:
            self.error(f"{path}.filter_chains",
                       f"exactly one filter chain is supported, got {len(lst.filter_chains)}")
            return None
        chain = self.filter_chain(lst.filter_chains[0], f"{path}.filter_chains[0]")
        if address is None or chain is None:
            return None
        return model.Listener(
            name=lst.name, address=address, filter_chain=chain,
            per_connection_buffer_limit_bytes=wrapped(
                lst, "per_connection_buffer_limit_bytes", 1024 * 1024),
            bind_to_port=wrapped(lst, "bind_to_port", True),
            stat_prefix=lst.stat_prefix)

    def filter_chain(self, fc: Message, path: str) -> model.FilterChain | None:
        self.only(fc, path, ("filters", "name"))
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
        return model.FilterChain(fc.name, nf) if nf else None

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
            "codec_type", "stat_prefix", "route_config", "http_filters", "use_remote_address",
            "xff_num_trusted_hops", "skip_xff_append", "generate_request_id",
            "preserve_external_request_id", "server_name", "server_header_transformation",
            "max_request_headers_kb", "stream_idle_timeout", "request_timeout",
            "request_headers_timeout", "drain_timeout", "common_http_protocol_options",
            "http_protocol_options", "access_log"))
        codec = {0: "AUTO", 1: "HTTP1"}.get(hcm.codec_type)
        if codec is None:
            self.error(f"{path}.codec_type", "only AUTO and HTTP1 are supported yet")
            codec = "AUTO"
        if not hcm.stat_prefix:
            self.error(f"{path}.stat_prefix", "value length must be at least 1 characters")
        if not hcm.HasField("route_config"):
            self.error(f"{path}.route_config", "an inline route_config is required (rds comes "
                       "with the xDS client)")
            return None
        route_config = self.route_config(hcm.route_config, f"{path}.route_config")
        http_filters, suppress = self.http_filters(hcm.http_filters, f"{path}.http_filters")
        common = hcm.common_http_protocol_options
        self.only(common, f"{path}.common_http_protocol_options",
                  ("idle_timeout", "max_headers_count", "max_requests_per_connection"))
        h1 = hcm.http_protocol_options
        self.only(h1, f"{path}.http_protocol_options", ("accept_http_10", "default_host_for_http_10"))
        kb = wrapped(hcm, "max_request_headers_kb", 60)
        if not 0 < kb <= 8192:
            self.error(f"{path}.max_request_headers_kb", "value must be in (0, 8192]")
        if route_config is None:
            return None
        return model.HttpConnectionManager(
            stat_prefix=hcm.stat_prefix, route_config=route_config,
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
            access_logs=tuple(each(hcm.access_log, f"{path}.access_log", self.access_log)))

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

    # --- routes -------------------------------------------------------------------

    def route_config(self, rc: Message, path: str) -> model.RouteConfig | None:
        self.only(rc, path, ("name", "virtual_hosts", "request_headers_to_add",
                             "request_headers_to_remove", "response_headers_to_add",
                             "response_headers_to_remove", "validate_clusters"))
        vhosts = each(rc.virtual_hosts, f"{path}.virtual_hosts", self.virtual_host)
        seen: dict[str, str] = {}
        for vh in vhosts:
            for domain in vh.domains:
                key = domain.lower()
                if key in seen:
                    self.error(f"{path}.virtual_hosts", f"only unique values for domains are "
                               f"permitted; duplicate entry of domain {domain}")
                seen[key] = vh.name
        return model.RouteConfig(
            name=rc.name, virtual_hosts=tuple(vhosts),
            request_headers=self.header_mutations(rc, path, "request"),
            response_headers=self.header_mutations(rc, path, "response"))

    def virtual_host(self, vh: Message, path: str) -> model.VirtualHost | None:
        self.only(vh, path, ("name", "domains", "routes", "request_headers_to_add",
                             "request_headers_to_remove", "response_headers_to_add",
                             "response_headers_to_remove", "metadata"))
        if not vh.name:
            self.error(f"{path}.name", "value length must be at least 1 characters")
        if not vh.domains:
            self.error(f"{path}.domains", "value must contain at least 1 item(s)")
        for i, d in enumerate(vh.domains):
            if d != "*" and d.count("*") > 1 or ("*" in d and not (d.startswith("*") or d.endswith("*"))):
                self.error(f"{path}.domains[{i}]", f"invalid wildcard domain {d!r}")
        routes = each(vh.routes, f"{path}.routes", self.route)
        return model.VirtualHost(
            name=vh.name, domains=tuple(vh.domains), routes=tuple(routes),
            request_headers=self.header_mutations(vh, path, "request"),
            response_headers=self.header_mutations(vh, path, "response"))

    def route(self, r: Message, path: str) -> model.Route | None:
        self.only(r, path, ("name", "match", "route", "redirect", "direct_response",
                            "request_headers_to_add", "request_headers_to_remove",
                            "response_headers_to_add", "response_headers_to_remove",
                            "metadata", "decorator"))
        match = self.route_match(r.match, f"{path}.match")
        which = r.WhichOneof("action")
        action: model.Action | None
        if which == "route":
            action = self.route_action(r.route, f"{path}.route")
        elif which == "redirect":
            action = self.redirect_action(r.redirect, f"{path}.redirect")
        elif which == "direct_response":
            action = self.direct_response(r.direct_response, f"{path}.direct_response")
        else:
            self.error(path, "one of route, redirect or direct_response is required")
            return None
        if match is None or action is None:
            return None
        return model.Route(match=match, action=action, name=r.name,
                           request_headers=self.header_mutations(r, path, "request"),
                           response_headers=self.header_mutations(r, path, "response"))

    def route_match(self, m: Message, path: str) -> model.RouteMatch | None:
        self.only(m, path, ("prefix", "path", "safe_regex", "path_separated_prefix",
                            "case_sensitive", "headers", "query_parameters"))
        kind = m.WhichOneof("path_specifier")
        headers = tuple(each(m.headers, f"{path}.headers", self.header_matcher))
        queries = tuple(each(m.query_parameters, f"{path}.query_parameters", self.query_matcher))
        case_sensitive = wrapped(m, "case_sensitive", True)
        if kind in ("prefix", "path"):
            value = getattr(m, kind)
            return model.RouteMatch(kind, value if case_sensitive else value.lower(),
                                    case_sensitive, None, headers, queries)
        if kind == "path_separated_prefix":
            value = m.path_separated_prefix
            if not value.startswith("/") or value.endswith("/") or "?" in value or "#" in value:
                self.error(f"{path}.path_separated_prefix",
                           "must start with '/', not end with '/', and hold no '?' or '#'")
            return model.RouteMatch(kind, value if case_sensitive else value.lower(),
                                    case_sensitive, None, headers, queries)
        if kind == "safe_regex":
            regex = self.regex(m.safe_regex, f"{path}.safe_regex")
            if regex is None:
                return None
            return model.RouteMatch(kind, m.safe_regex.regex, case_sensitive, regex,
                                    headers, queries)
        self.error(path, "one of prefix, path, safe_regex or path_separated_prefix is required")
        return None

    def regex(self, rm: Message, path: str) -> Any:
        self.only(rm, path, ("regex", "google_re2"))
        try:
            return compile_regex(rm.regex)
        except Exception as e:  # re2.error has no stable public name across releases
            self.error(f"{path}.regex", f"invalid RE2 regex {rm.regex!r}: {e}")
            return None

    def string_matcher(self, sm: Message, path: str) -> StringMatcher | None:
        self.only(sm, path, ("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"))
        kind = sm.WhichOneof("match_pattern")
        if kind == "safe_regex":
            regex = self.regex(sm.safe_regex, f"{path}.safe_regex")
            return StringMatcher("regex", sm.safe_regex.regex, False, regex) if regex else None
        if kind is None:
            self.error(path, "one of exact, prefix, suffix, contains or safe_regex is required")
            return None
        value = getattr(sm, kind)
        if kind in ("prefix", "suffix", "contains") and not value:
            self.error(f"{path}.{kind}", "value length must be at least 1 characters")
        return StringMatcher(kind, value.lower() if sm.ignore_case else value, sm.ignore_case)

    def header_matcher(self, h: Message, path: str) -> model.HeaderMatcher | None:
        self.only(h, path, ("name", "exact_match", "safe_regex_match", "range_match",
                            "present_match", "prefix_match", "suffix_match", "contains_match",
                            "string_match", "invert_match", "treat_missing_header_as_empty"))
        name = h.name.lower()
        kind = h.WhichOneof("header_match_specifier")
        common = dict(invert=h.invert_match, treat_missing_as_empty=h.treat_missing_header_as_empty)
        if kind is None:
            # No specifier: Envoy treats it as "header is present".
            return model.HeaderMatcher(name, present=True, **common)
        if kind == "present_match":
            return model.HeaderMatcher(name, present=h.present_match, **common)
        if kind == "range_match":
            return model.HeaderMatcher(name, range=(h.range_match.start, h.range_match.end), **common)
        if kind == "string_match":
            sm = self.string_matcher(h.string_match, f"{path}.string_match")
            return model.HeaderMatcher(name, string=sm, **common) if sm else None
        if kind == "safe_regex_match":
            regex = self.regex(h.safe_regex_match, f"{path}.safe_regex_match")
            if regex is None:
                return None
            return model.HeaderMatcher(
                name, string=StringMatcher("regex", h.safe_regex_match.regex, False, regex), **common)
        legacy = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                  "contains_match": "contains"}[kind]
        return model.HeaderMatcher(name, string=StringMatcher(legacy, getattr(h, kind)), **common)

    def query_matcher(self, q: Message, path: str) -> model.QueryParameterMatcher | None:
        self.only(q, path, ("name", "string_match", "present_match"))
        if q.HasField("string_match"):
            sm = self.string_matcher(q.string_match, f"{path}.string_match")
            return model.QueryParameterMatcher(q.name, string=sm) if sm else None
        return model.QueryParameterMatcher(q.name, present=True)

    def route_action(self, a: Message, path: str) -> model.RouteAction | None:
        self.only(a, path, ("cluster", "cluster_header", "weighted_clusters",
                            "cluster_not_found_response_code", "prefix_rewrite", "regex_rewrite",
                            "host_rewrite_literal", "auto_host_rewrite", "timeout"))
        spec = a.WhichOneof("cluster_specifier")
        if spec not in ("cluster", "cluster_header", "weighted_clusters"):
            self.error(path, "one of cluster, cluster_header or weighted_clusters is required")
            return None
        if a.prefix_rewrite and a.HasField("regex_rewrite"):
            self.error(path, "only one of prefix_rewrite and regex_rewrite may be set")
        entries: list[model.WeightedClusterEntry] = []
        total = 0
        if spec == "weighted_clusters":
            wc, wpath = a.weighted_clusters, f"{path}.weighted_clusters"
            self.only(wc, wpath, ("clusters", "total_weight"))
            for i, c in enumerate(wc.clusters):
                cp = f"{wpath}.clusters[{i}]"
                self.only(c, cp, ("name", "weight", "request_headers_to_add",
                                  "request_headers_to_remove", "response_headers_to_add",
                                  "response_headers_to_remove", "host_rewrite_literal"))
                if not c.name:
                    self.error(f"{cp}.name", "value length must be at least 1 characters")
                entries.append(model.WeightedClusterEntry(
                    name=c.name, weight=wrapped(c, "weight", 0),
                    request_headers=self.header_mutations(c, cp, "request"),
                    response_headers=self.header_mutations(c, cp, "response"),
                    host_rewrite_literal=c.host_rewrite_literal or None))
            total = sum(e.weight for e in entries)
            if wc.HasField("total_weight") and wc.total_weight.value != total:
                self.error(f"{wpath}.total_weight", f"sum of weights ({total}) must equal "
                           f"total_weight ({wc.total_weight.value})")
            if not entries or total == 0:
                self.error(f"{wpath}.clusters", "at least one cluster with a non-zero weight")
        return model.RouteAction(
            cluster=a.cluster or None, cluster_header=a.cluster_header.lower() or None,
            weighted_clusters=tuple(entries), total_weight=total,
            cluster_not_found_response_code={0: 503, 1: 404, 2: 500}.get(
                a.cluster_not_found_response_code, 503),
            prefix_rewrite=a.prefix_rewrite or None,
            regex_rewrite=self.regex_rewrite(a, path),
            host_rewrite_literal=a.host_rewrite_literal or None,
            auto_host_rewrite=wrapped(a, "auto_host_rewrite", False),
            timeout=optional_timeout(a, "timeout", 15.0))

    def regex_rewrite(self, a: Message, path: str) -> model.RegexRewrite | None:
        if not a.HasField("regex_rewrite"):
            return None
        rr = a.regex_rewrite
        self.only(rr, f"{path}.regex_rewrite", ("pattern", "substitution"))
        regex = self.regex(rr.pattern, f"{path}.regex_rewrite.pattern")
        return model.RegexRewrite(regex, rr.substitution) if regex else None

    def redirect_action(self, r: Message, path: str) -> model.RedirectAction:
        scheme = "https" if r.https_redirect else (r.scheme_redirect or None)
        path_kind = r.WhichOneof("path_rewrite_specifier")
        return model.RedirectAction(
            scheme=scheme, host=r.host_redirect or None, port=r.port_redirect or None,
            path=r.path_redirect if path_kind == "path_redirect" else None,
            prefix_rewrite=r.prefix_rewrite if path_kind == "prefix_rewrite" else None,
            regex_rewrite=self.regex_rewrite(r, path) if path_kind == "regex_rewrite" else None,
            response_code=REDIRECT_CODES[r.response_code], strip_query=r.strip_query)

    def direct_response(self, d: Message, path: str) -> model.DirectResponseAction | None:
        self.only(d, path, ("status", "body"))
        if not 200 <= d.status < 600:
            self.error(f"{path}.status", "value must be inside range [200, 600)")
        body = self.data_source(d.body, f"{path}.body") if d.HasField("body") else None
        return model.DirectResponseAction(d.status, body)

    def data_source(self, ds: Message, path: str) -> bytes | None:
        self.only(ds, path, ("filename", "inline_bytes", "inline_string"))
        kind = ds.WhichOneof("specifier")
        if kind == "inline_string":
            return ds.inline_string.encode()
        if kind == "inline_bytes":
            return ds.inline_bytes
        if kind == "filename":
            try:
                with open(ds.filename, "rb") as f:
                    return f.read()
            except OSError as e:
                self.error(f"{path}.filename", f"cannot read {ds.filename}: {e.strerror}")
        return None

    def header_mutations(self, msg: Message, path: str, which: str) -> model.HeaderMutations | None:
        add_field, remove_field = f"{which}_headers_to_add", f"{which}_headers_to_remove"
        adds = []
        for i, hv in enumerate(getattr(msg, add_field)):
            p = f"{path}.{add_field}[{i}]"
            self.only(hv, p, ("header", "append", "append_action", "keep_empty_value"))
            self.only(hv.header, f"{p}.header", ("key", "value", "raw_value"))
            key = hv.header.key.lower()
            if not key:
                self.error(f"{p}.header.key", "value length must be at least 1 characters")
            if key.startswith(":") or key == "host":
                self.error(f"{p}.header.key", f"{key} may not be modified")
            action = {0: "APPEND_IF_EXISTS_OR_ADD", 1: "ADD_IF_ABSENT",
                      2: "OVERWRITE_IF_EXISTS_OR_ADD", 3: "OVERWRITE_IF_EXISTS"}[hv.append_action]
            if hv.HasField("append"):   # deprecated BoolValue: false means overwrite
                action = "APPEND_IF_EXISTS_OR_ADD" if hv.append.value else "OVERWRITE_IF_EXISTS_OR_ADD"
            value = hv.header.value or hv.header.raw_value.decode("latin-1")
            if "%" in value:
                self.error(f"{p}.header.value", "header formatters (%...%) are not supported yet")
            adds.append(model.HeaderValueOption(key, value, action, hv.keep_empty_value))
        removes = tuple(h.lower() for h in getattr(msg, remove_field))
        return model.HeaderMutations(tuple(adds), removes) if adds or removes else None

    def validate_route_clusters(self, listeners: Any, cluster_names: set[str]) -> None:
        """Envoy's validate_clusters (default true for inline route tables)."""
        for li, lst in enumerate(listeners):
            for ci, fc in enumerate(lst.filter_chains):
                for fi, f in enumerate(fc.filters):
                    path = f"static_resources.listeners[{li}].filter_chains[{ci}].filters[{fi}]"
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
                        for name in _route_cluster_names(hcm.route_config):
                            if name not in cluster_names:
                                self.error(f"{path}.typed_config.route_config",
                                           f"route: unknown cluster '{name}'")

    # --- clusters -----------------------------------------------------------------

    def cluster(self, c: Message, path: str) -> model.Cluster | None:
        self.only(c, path, ("name", "type", "connect_timeout", "lb_policy", "load_assignment",
                            "dns_refresh_rate", "dns_lookup_family", "respect_dns_ttl",
                            "per_connection_buffer_limit_bytes", "common_http_protocol_options",
                            "typed_extension_protocol_options", "max_requests_per_connection",
                            "least_request_lb_config", "metadata", "alt_stat_name",
                            "common_lb_config"))
        if not c.name:
            self.error(f"{path}.name", "value length must be at least 1 characters")
        ctype = {0: "STATIC", 1: "STRICT_DNS"}.get(c.type)
        if c.WhichOneof("cluster_discovery_type") == "cluster_type" or ctype is None:
            self.error(f"{path}.type", "only STATIC and STRICT_DNS clusters are supported yet")
            return None
        lb = {0: "ROUND_ROBIN", 1: "LEAST_REQUEST", 3: "RANDOM"}.get(c.lb_policy)
        if lb is None:
            self.error(f"{path}.lb_policy", "only ROUND_ROBIN, LEAST_REQUEST and RANDOM are "
                       "supported yet")
            lb = "ROUND_ROBIN"
        choice_count = 2
        if c.HasField("least_request_lb_config"):
            lrc = c.least_request_lb_config
            self.only(lrc, f"{path}.least_request_lb_config", ("choice_count",))
            choice_count = wrapped(lrc, "choice_count", 2)
        panic = 50.0
        if c.HasField("common_lb_config"):
            clc = c.common_lb_config
            self.only(clc, f"{path}.common_lb_config", ("healthy_panic_threshold",))
            if clc.HasField("healthy_panic_threshold"):
                panic = clc.healthy_panic_threshold.value
                if not 0 <= panic <= 100:
                    self.error(f"{path}.common_lb_config.healthy_panic_threshold",
                               "value must be inside range [0, 100]")
        idle, max_requests = self.upstream_http_options(c, path)
        endpoints = self.load_assignment(c, f"{path}.load_assignment", ctype)
        family = {0: "AUTO", 1: "V4_ONLY", 2: "V6_ONLY", 3: "V4_PREFERRED", 4: "ALL"}[
            c.dns_lookup_family]
        return model.Cluster(
            name=c.name, type=ctype, endpoints=endpoints, lb_policy=lb,
            least_request_choice_count=choice_count,
            connect_timeout=seconds(c.connect_timeout) if c.HasField("connect_timeout") else 5.0,
            per_connection_buffer_limit_bytes=wrapped(
                c, "per_connection_buffer_limit_bytes", 1024 * 1024),
            idle_timeout=idle, max_requests_per_connection=max_requests,
            dns_refresh_rate=(seconds(c.dns_refresh_rate)
                              if c.HasField("dns_refresh_rate") else 5.0),
            dns_lookup_family=family, healthy_panic_threshold=panic)

    def upstream_http_options(self, c: Message, path: str) -> tuple[float | None, int]:
        """Idle timeout and max requests per pooled connection, from either place Envoy reads them."""
        common = c.common_http_protocol_options
        common_path = f"{path}.common_http_protocol_options"
        for key, any_msg in c.typed_extension_protocol_options.items():
            p = f"{path}.typed_extension_protocol_options[{key}]"
            if key != HTTP_PROTOCOL_OPTIONS_KEY or any_msg.type_url != HTTP_PROTOCOL_OPTIONS_TYPE:
                self.error(p, f"protocol options {key!r} are not supported")
                continue
            opts = self.unpack(any_msg, p)
            if opts is None:
                continue
            self.only(opts, p, ("common_http_protocol_options", "explicit_http_config"))
            if opts.HasField("explicit_http_config"):
                which = opts.explicit_http_config.WhichOneof("protocol_config")
                if which != "http_protocol_options":
                    self.error(f"{p}.explicit_http_config", "only HTTP/1.1 upstreams are "
                               "supported yet")
                self.only(opts.explicit_http_config.http_protocol_options,
                          f"{p}.explicit_http_config.http_protocol_options", ())
            if opts.HasField("common_http_protocol_options"):
                common, common_path = opts.common_http_protocol_options, f"{p}.common_http_protocol_options"
        self.only(common, common_path, ("idle_timeout", "max_requests_per_connection"))
        max_requests = wrapped(common, "max_requests_per_connection",
                               wrapped(c, "max_requests_per_connection", 0))
        return optional_timeout(common, "idle_timeout", 3600.0), max_requests

    def load_assignment(self, c: Message, path: str, ctype: str) -> tuple[model.Endpoint, ...]:
        la = c.load_assignment
        self.only(la, path, ("cluster_name", "endpoints"))
        out: list[model.Endpoint] = []
        for i, lle in enumerate(la.endpoints):
            lp = f"{path}.endpoints[{i}]"
            self.only(lle, lp, ("locality", "lb_endpoints", "load_balancing_weight", "priority"))
            for j, lbe in enumerate(lle.lb_endpoints):
                ep = f"{lp}.lb_endpoints[{j}]"
                self.only(lbe, ep, ("endpoint", "health_status", "load_balancing_weight", "metadata"))
                self.only(lbe.endpoint, f"{ep}.endpoint", ("address", "hostname", "health_check_config"))
                address = self.socket_address(lbe.endpoint.address, f"{ep}.endpoint.address")
                if address is None:
                    continue
                weight = wrapped(lbe, "load_balancing_weight", 1)
                if weight < 1:
                    self.error(f"{ep}.load_balancing_weight", "value must be greater than or equal to 1")
                status = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING",
                          4: "TIMEOUT", 5: "DEGRADED"}[lbe.health_status]
                out.append(model.Endpoint(address, weight, status, lbe.endpoint.hostname,
                                          lle.priority))
        if ctype == "STRICT_DNS":
            return tuple(out)
        for e in out:
            if not _is_ip(e.address.address):
                self.error(path, f"STATIC cluster endpoint {e.address.address!r} is not an IP "
                           "address (use STRICT_DNS)")
        return tuple(out)


def _is_ip(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _route_cluster_names(rc: Message) -> list[str]:
    names = []
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            if r.WhichOneof("action") != "route":
                continue
            if r.route.cluster:
                names.append(r.route.cluster)
            names += [c.name for c in r.route.weighted_clusters.clusters if c.name]
    return names


def translate_bootstrap(bootstrap: Message, lookup_http_filter: FilterParserLookup
                        ) -> tuple[model.Snapshot, list[str]]:
    """Bootstrap protobuf -> Snapshot, or ConfigErrors listing every problem found."""
    t = Translator(lookup_http_filter)
    snapshot = t.bootstrap(bootstrap)
    if snapshot is None:
        raise ConfigErrors(t.errors or [ConfigError("", "invalid config")])
    return snapshot, t.warnings
