"""Route configuration protobuf -> model: virtual hosts, matchers, actions, header mutations."""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message

from config import model
from config.errors import ConfigError
from config.matchers import StringMatcher, compile_regex
from config.translate_base import TranslatorBase, each, optional_timeout, seconds, wrapped
from config.translate_hash import hash_policies

REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
# retry_on conditions of Envoy 1.40's router (x-envoy-retry-on / x-envoy-retry-grpc-on tokens).
RETRY_ON = frozenset(("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
                      "envoy-ratelimited", "retriable-4xx", "refused-stream",
                      "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
                      "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
                      "unavailable"))
PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"


class RouteTranslator(TranslatorBase):
    # --- routes -------------------------------------------------------------------

    def route_config(self, rc: Message, path: str) -> model.RouteConfig | None:
        self.only(rc, path, ("name", "virtual_hosts", "request_headers_to_add",
                             "request_headers_to_remove", "response_headers_to_add",
                             "response_headers_to_remove", "validate_clusters",
                             "typed_per_filter_config"))
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
            response_headers=self.header_mutations(rc, path, "response"),
            typed_per_filter_config=self.per_filter_configs(rc, path))

    def virtual_host(self, vh: Message, path: str) -> model.VirtualHost | None:
        self.only(vh, path, ("name", "domains", "routes", "request_headers_to_add",
                             "request_headers_to_remove", "response_headers_to_add",
                             "response_headers_to_remove", "metadata", "typed_per_filter_config",
                             "retry_policy", "include_request_attempt_count",
                             "include_attempt_count_in_response", "per_request_buffer_limit_bytes"))
        if not vh.name:
            self.error(f"{path}.name", "value length must be at least 1 characters")
        if not vh.domains:
            self.error(f"{path}.domains", "value must contain at least 1 item(s)")
        for i, d in enumerate(vh.domains):
            if d != "*" and d.count("*") > 1 or ("*" in d and not (d.startswith("*") or d.endswith("*"))):
                self.error(f"{path}.domains[{i}]", f"invalid wildcard domain {d!r}")
        routes = each(vh.routes, f"{path}.routes", self.route)
        vh_policy = (self.retry_policy(vh.retry_policy, f"{path}.retry_policy")
                     if vh.HasField("retry_policy") else None)
        routes = [self.with_retry_policy(r, vh, vh_policy) for r in routes]
        return model.VirtualHost(
            name=vh.name, domains=tuple(vh.domains), routes=tuple(routes),
            request_headers=self.header_mutations(vh, path, "request"),
            response_headers=self.header_mutations(vh, path, "response"),
            typed_per_filter_config=self.per_filter_configs(vh, path))

    def route(self, r: Message, path: str) -> model.Route | None:
        self.only(r, path, ("name", "match", "route", "redirect", "direct_response",
                            "request_headers_to_add", "request_headers_to_remove",
                            "response_headers_to_add", "response_headers_to_remove",
                            "metadata", "decorator", "typed_per_filter_config",
                            "per_request_buffer_limit_bytes"))
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
                           response_headers=self.header_mutations(r, path, "response"),
                           typed_per_filter_config=self.per_filter_configs(r, path),
                           per_request_buffer_limit_bytes=wrapped(r, "per_request_buffer_limit_bytes",
                                                                  None))

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
                            "host_rewrite_literal", "auto_host_rewrite", "timeout", "retry_policy",
                            "request_mirror_policies", "max_stream_duration", "hash_policy",
                            "upgrade_configs"))
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
            # Envoy 1.40: a route with max_stream_duration (even empty) takes its "new
            # timeouts": the route timeout is ignored (and x-envoy-expected-rq-timeout-ms
            # not sent); the stream's limit bounds it instead.
            timeout=(None if a.HasField("max_stream_duration")
                     else optional_timeout(a, "timeout", 15.0)),
            retry_policy=(self.retry_policy(a.retry_policy, f"{path}.retry_policy")
                          if a.HasField("retry_policy") else None),
            hash_policy=hash_policies(self, a, path),
            mirror_policies=tuple(self.mirror_policy(m, f"{path}.request_mirror_policies[{i}]")
                                  for i, m in enumerate(a.request_mirror_policies)),
            upgrade_configs=tuple(each(a.upgrade_configs, f"{path}.upgrade_configs",
                                       self.upgrade_config)),
            **self.max_stream_duration(a, path))

    def upgrade_config(self, u: Message, path: str) -> tuple[str, bool] | None:
        """One upgrade_configs entry (HCM or route): (lower-case upgrade type, enabled)."""
        self.only(u, path, ("upgrade_type", "enabled"))
        kind = u.upgrade_type.lower()
        if not kind:
            self.error(f"{path}.upgrade_type", "value length must be at least 1 characters")
            return None
        if kind == "connect":
            self.error(f"{path}.upgrade_type", "CONNECT is not supported yet")
            return None
        return kind, wrapped(u, "enabled", True)

    def max_stream_duration(self, a: Message, path: str) -> dict[str, Any]:
        """RouteAction.max_stream_duration as RouteAction fields."""
        if not a.HasField("max_stream_duration"):
            return {}
        m, mp = a.max_stream_duration, f"{path}.max_stream_duration"
        self.only(m, mp, ("max_stream_duration", "grpc_timeout_header_max",
                          "grpc_timeout_header_offset"))
        out: dict[str, Any] = {}
        if m.HasField("max_stream_duration") and seconds(m.max_stream_duration) > 0:
            out["max_stream_duration"] = seconds(m.max_stream_duration)
        if m.HasField("grpc_timeout_header_max"):
            out["grpc_timeout_header_max"] = seconds(m.grpc_timeout_header_max)
        if m.HasField("grpc_timeout_header_offset"):
            out["grpc_timeout_header_offset"] = seconds(m.grpc_timeout_header_offset)
        return out

    def mirror_policy(self, m: Message, path: str) -> model.MirrorPolicy:
        self.only(m, path, ("cluster", "cluster_header", "runtime_fraction", "trace_sampled",
                            "disable_shadow_host_suffix_append"))
        if bool(m.cluster) == bool(m.cluster_header):
            self.error(path, "exactly one of cluster and cluster_header is required")
        if wrapped(m, "trace_sampled", False):
            # No tracing: no request is trace-sampled, so Envoy would never mirror.
            self.error(f"{path}.trace_sampled", "true is not supported (sidecar does no tracing)")
        numerator, denominator = 100, 100
        if m.HasField("runtime_fraction"):
            rf, rp = m.runtime_fraction, f"{path}.runtime_fraction"
            self.only(rf, rp, ("default_value", "runtime_key"))
            self.only(rf.default_value, f"{rp}.default_value", ("numerator", "denominator"))
            numerator = rf.default_value.numerator
            denominator = {0: 100, 1: 10_000, 2: 1_000_000}.get(rf.default_value.denominator, 100)
        return model.MirrorPolicy(cluster=m.cluster or None,
                                  cluster_header=m.cluster_header.lower() or None,
                                  numerator=numerator, denominator=denominator,
                                  disable_shadow_host_suffix_append=m.disable_shadow_host_suffix_append)

    # --- retries ------------------------------------------------------------------

    def retry_policy(self, rp: Message, path: str) -> model.RetryPolicy | None:
        self.only(rp, path, ("retry_on", "num_retries", "per_try_timeout", "retry_host_predicate",
                             "host_selection_retry_max_attempts", "retriable_status_codes",
                             "retry_back_off", "retriable_headers"))
        retry_on = frozenset(t.strip() for t in rp.retry_on.split(",") if t.strip())
        unknown = sorted(retry_on - RETRY_ON)
        if unknown:     # Envoy warns and ignores them
            self.warnings.append(f"{path}.retry_on: unknown retry_on token(s) {unknown} ignored")
            retry_on = retry_on & RETRY_ON
        base, top = 25, None
        if rp.HasField("retry_back_off"):
            bp = f"{path}.retry_back_off"
            bo = rp.retry_back_off
            self.only(bo, bp, ("base_interval", "max_interval"))
            if not bo.HasField("base_interval"):
                self.error(f"{bp}.base_interval", "value is required")
            base_s = seconds(bo.base_interval)
            if base_s <= 0:
                self.error(f"{bp}.base_interval", "value must be greater than 0s")
            base = max(int(base_s * 1000), 1)       # below 1 ms: rounded up to 1 ms (Envoy)
            if bo.HasField("max_interval"):
                top = max(int(seconds(bo.max_interval) * 1000), 1)
                if top < base:
                    self.error(f"{bp}.max_interval",
                               "max_interval must be greater than or equal to the base_interval")
        previous_hosts = False
        for i, pred in enumerate(rp.retry_host_predicate):
            pp = f"{path}.retry_host_predicate[{i}]"
            self.only(pred, pp, ("name", "typed_config"))
            if pred.typed_config.type_url.rsplit("/", 1)[-1] != PREVIOUS_HOSTS:
                self.error(pp, f"retry host predicate {pred.name or pred.typed_config.type_url!r} "
                               "is not supported by sidecar yet (only previous_hosts)")
            previous_hosts = True
        return model.RetryPolicy(
            retry_on=retry_on, num_retries=wrapped(rp, "num_retries", 1),
            per_try_timeout=optional_timeout(rp, "per_try_timeout", None),
            retriable_status_codes=frozenset(rp.retriable_status_codes),
            retriable_headers=tuple(each(rp.retriable_headers, f"{path}.retriable_headers",
                                         self.header_matcher)),
            base_interval_ms=base, max_interval_ms=top if top is not None else 10 * base,
            previous_hosts=previous_hosts,
            host_selection_retry_max_attempts=rp.host_selection_retry_max_attempts or 1)

    def with_retry_policy(self, route: model.Route, vh: Message,
                          vh_policy: model.RetryPolicy | None) -> model.Route:
        """Fold the virtual host's retry settings into a forwarding route's action: the
        route's own retry_policy wins whole over the virtual host's (as Envoy)."""
        action = route.action
        if type(action) is not model.RouteAction:
            return route
        policy = action.retry_policy or vh_policy
        in_response, in_request = vh.include_attempt_count_in_response, vh.include_request_attempt_count
        if policy is None and not in_response and not in_request:
            return route
        limit = route.per_request_buffer_limit_bytes
        if limit is None:
            limit = wrapped(vh, "per_request_buffer_limit_bytes", None)
        policy = dataclasses.replace(policy or model.RetryPolicy(), buffer_limit=limit,
                                     include_attempt_count_in_response=in_response,
                                     include_request_attempt_count=in_request)
        return dataclasses.replace(route, action=dataclasses.replace(action, retry_policy=policy))

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

    def header_mutations(self, msg: Message, path: str, which: str) -> model.HeaderMutations | None:
        add_field, remove_field = f"{which}_headers_to_add", f"{which}_headers_to_remove"
        adds = []
        for i, hv in enumerate(getattr(msg, add_field)):
            p = f"{path}.{add_field}[{i}]"
            option = self.header_value_option(hv, p)
            if option.name.startswith(":") or option.name == "host":
                self.error(f"{p}.header.key", f"{option.name} may not be modified")
            adds.append(option)
        removes = tuple(h.lower() for h in getattr(msg, remove_field))
        return model.HeaderMutations(tuple(adds), removes) if adds or removes else None

    def per_filter_configs(self, msg: Message, path: str) -> model.PerFilterConfigs:
        """typed_per_filter_config of a route, virtual host or route config, as Envoy's
        PerFilterConfigs: the filter is found by the config's type URL (the key is only
        the name it is stored under), and must take per-route config.  A
        ``FilterConfig`` wrapper may disable the filter there, or make an unknown
        config optional (skipped with a warning)."""
        out: list[tuple[str, Any]] = []
        for name, any_msg in sorted(msg.typed_per_filter_config.items()):
            p = f"{path}.typed_per_filter_config[{name}]"
            optional = False
            if any_msg.type_url.rsplit("/", 1)[-1] == FILTER_CONFIG_TYPE:
                wrapper = self.unpack(any_msg, p)
                if wrapper is None:
                    continue
                self.only(wrapper, p, ("config", "is_optional", "disabled"))
                if wrapper.disabled:
                    out.append((name, model.FILTER_DISABLED))
                    continue
                if not wrapper.HasField("config"):
                    self.error(p, f"Empty route/virtual host per filter configuration for {name} filter")
                    continue
                if not wrapper.config.type_url:
                    # Envoy: enables a filter that http_filters marks disabled.
                    self.error(f"{p}.config", "enabling a filter per route (a FilterConfig with "
                               "an empty config) is not supported by sidecar yet")
                    continue
                any_msg, p, optional = wrapper.config, f"{p}.config", wrapper.is_optional
            type_url = any_msg.type_url
            parse = self.lookup_http_filter("", type_url)
            # The factory says whether its filter reads per-route config (``per_route``).
            per_route = getattr(getattr(parse, "__self__", None), "per_route", False)
            if parse is None or not per_route:
                if optional:
                    self.warnings.append(f"{p}: optional per-route config for HTTP filter "
                                         f"{name!r} ({type_url}) is not used by sidecar; skipped")
                elif parse is None:
                    self.error(p, f"HTTP filter config {type_url or '(no @type)'} for {name!r} "
                               "is not supported by sidecar")
                else:
                    self.error(p, f"The filter {name} doesn't support virtual host or route "
                               "specific configurations")
                continue
            config_msg = self.unpack(any_msg, p)
            if config_msg is None:
                continue
            try:
                out.append((name, parse(config_msg, p)))
            except ConfigError as e:
                self.errors.append(e)
        return tuple(out)



def route_cluster_names(rc: Message) -> list[tuple[str, str]]:
    """The clusters a route table names, each with what names it ("cluster" or "shadow
    cluster", as Envoy's validate_clusters error says)."""
    names = []
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            if r.WhichOneof("action") != "route":
                continue
            if r.route.cluster:
                names.append((r.route.cluster, "cluster"))
            names += [(c.name, "cluster") for c in r.route.weighted_clusters.clusters if c.name]
            names += [(m.cluster, "shadow cluster") for m in r.route.request_mirror_policies
                      if m.cluster]
    return names
