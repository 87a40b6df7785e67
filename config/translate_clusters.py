"""Cluster protobuf -> model: discovery type, load balancing, endpoints, upstream HTTP options."""

from __future__ import annotations

import ipaddress
from typing import Any

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, optional_timeout, seconds, wrapped
from config.translate_hash import endpoint_hash_key, hash_lb_config
from config.translate_health_checks import health_checks
from config.translate_original_dst import original_dst_fields
from config.translate_outlier import outlier_detection

HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class ClusterTranslator(TranslatorBase):
    def cluster(self, c: Message, path: str) -> model.Cluster | None:
        self.only(c, path, ("name", "type", "connect_timeout", "lb_policy", "load_assignment",
                            "dns_refresh_rate", "dns_lookup_family", "respect_dns_ttl",
                            "per_connection_buffer_limit_bytes", "common_http_protocol_options",
                            "typed_extension_protocol_options", "max_requests_per_connection",
                            "least_request_lb_config", "metadata", "alt_stat_name",
                            "common_lb_config", "eds_cluster_config", "circuit_breakers",
                            "outlier_detection", "health_checks", "ring_hash_lb_config",
                            "maglev_lb_config", "original_dst_lb_config", "cleanup_interval",
                            "upstream_bind_config"))
        if not c.name:
            self.error(f"{path}.name", "value length must be at least 1 characters")
        ctype = {0: "STATIC", 1: "STRICT_DNS", 3: "EDS", 4: "ORIGINAL_DST"}.get(c.type)
        if c.WhichOneof("cluster_discovery_type") == "cluster_type" or ctype is None:
            self.error(f"{path}.type", "only STATIC, STRICT_DNS, EDS and ORIGINAL_DST clusters are supported yet")
            return None
        eds_service_name = ""
        eds_source = None
        if ctype == "EDS":
            eds = c.eds_cluster_config
            self.only(eds, f"{path}.eds_cluster_config", ("eds_config", "service_name"))
            eds_source = self.config_source(eds.eds_config, f"{path}.eds_cluster_config.eds_config")
            eds_service_name = eds.service_name or c.name
        elif c.HasField("eds_cluster_config"):
            self.error(f"{path}.eds_cluster_config", "only EDS clusters take eds_cluster_config")
        lb = {0: "ROUND_ROBIN", 1: "LEAST_REQUEST", 2: "RING_HASH", 3: "RANDOM",
              5: "MAGLEV", 6: "CLUSTER_PROVIDED"}.get(c.lb_policy)
        if lb is None:
            self.error(f"{path}.lb_policy", "only ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH "
                       "and MAGLEV are supported yet")
            lb = "ROUND_ROBIN"
        hashing = hash_lb_config(self, c, path, lb)
        choice_count = 2
        if c.HasField("least_request_lb_config"):
            lrc = c.least_request_lb_config
            self.only(lrc, f"{path}.least_request_lb_config", ("choice_count",))
            choice_count = wrapped(lrc, "choice_count", 2)
        panic = 50.0
        locality_weighted = False
        if c.HasField("common_lb_config"):
            clc = c.common_lb_config
            self.only(clc, f"{path}.common_lb_config", ("healthy_panic_threshold",
                                                         "locality_weighted_lb_config",
                                                         "consistent_hashing_lb_config"))
            if clc.HasField("healthy_panic_threshold"):
                panic = clc.healthy_panic_threshold.value
                if not 0 <= panic <= 100:
                    self.error(f"{path}.common_lb_config.healthy_panic_threshold",
                               "value must be inside range [0, 100]")
            if clc.HasField("locality_weighted_lb_config"):
                locality_weighted = True
                if lb not in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"):
                    # Envoy folds locality weights into the ring's host weights; not done yet.
                    self.error(f"{path}.common_lb_config.locality_weighted_lb_config",
                               f"not supported with lb_policy {lb} yet (see docs/compatibility.md)")
        breakers = self.circuit_breakers(c, path)
        outlier = (outlier_detection(self, c.outlier_detection, f"{path}.outlier_detection")
                   if c.HasField("outlier_detection") else None)
        idle, max_requests, http2, downstream = self.upstream_http_options(c, path)
        endpoints = self.load_assignment(c.load_assignment, f"{path}.load_assignment", ctype)
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
            dns_lookup_family=family, healthy_panic_threshold=panic,
            locality_weighted_lb=locality_weighted,
            eds_service_name=eds_service_name, eds_config_source=eds_source, http2_options=http2,
            downstream_protocol=downstream,
            outlier_detection=outlier, health_check=health_checks(self, c, path), **breakers,
            **hashing, **original_dst_fields(self, c, path, ctype, lb))

    def circuit_breakers(self, c: Message, path: str) -> dict[str, Any]:
        """circuit_breakers.thresholds of priority DEFAULT as Cluster fields (HIGH is accepted
        and unused: routes have no priority, so every request is DEFAULT)."""
        out: dict[str, Any] = {}
        if not c.HasField("circuit_breakers"):
            return out
        cb = c.circuit_breakers
        cb_path = f"{path}.circuit_breakers"
        self.only(cb, cb_path, ("thresholds",))
        seen: set[int] = set()
        for i, t in enumerate(cb.thresholds):
            tp = f"{cb_path}.thresholds[{i}]"
            self.only(t, tp, ("priority", "max_connections", "max_pending_requests",
                              "max_requests", "max_retries", "retry_budget", "track_remaining"))
            if t.priority not in (0, 1):
                self.error(f"{tp}.priority", "value must be one of the defined enum values")
                continue
            if t.priority in seen:
                continue        # Envoy: the first threshold of a priority wins
            seen.add(t.priority)
            if t.priority != 0:
                continue
            out["max_connections"] = wrapped(t, "max_connections", 1024)
            out["max_pending_requests"] = wrapped(t, "max_pending_requests", 1024)
            out["max_requests"] = wrapped(t, "max_requests", 1024)
            out["max_retries"] = wrapped(t, "max_retries", 3)
            out["track_remaining"] = bool(t.track_remaining)
            if t.HasField("retry_budget"):
                budget = t.retry_budget
                self.only(budget, f"{tp}.retry_budget", ("budget_percent", "min_retry_concurrency"))
                percent = budget.budget_percent.value if budget.HasField("budget_percent") else 20.0
                if not 0 <= percent <= 100:
                    self.error(f"{tp}.retry_budget.budget_percent", "value must be inside range [0, 100]")
                out["retry_budget_percent"] = percent
                out["retry_budget_min_concurrency"] = wrapped(budget, "min_retry_concurrency", 3)
        return out

    def upstream_http_options(self, c: Message, path: str
                              ) -> tuple[float | None, int, model.UpstreamHttp2 | None, bool]:
        """Idle timeout, max requests per pooled connection (from either place Envoy reads
        them), the HTTP/2 settings when the cluster speaks HTTP/2 (to every request, or with
        use_downstream_protocol_config to those that came in over HTTP/2), and whether
        the protocol follows the downstream one."""
        http2: model.UpstreamHttp2 | None = None
        downstream = False
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
            self.only(opts, p, ("common_http_protocol_options", "explicit_http_config",
                                "use_downstream_protocol_config"))
            if opts.HasField("explicit_http_config"):
                which = opts.explicit_http_config.WhichOneof("protocol_config")
                if which == "http2_protocol_options":
                    http2 = self.upstream_http2(opts.explicit_http_config.http2_protocol_options,
                                                f"{p}.explicit_http_config.http2_protocol_options")
                elif which != "http_protocol_options":
                    self.error(f"{p}.explicit_http_config", "only HTTP/1.1 and (for gRPC "
                               "services) HTTP/2 upstreams are supported yet")
                else:
                    self.only(opts.explicit_http_config.http_protocol_options,
                              f"{p}.explicit_http_config.http_protocol_options", ())
            if opts.HasField("use_downstream_protocol_config"):
                http2, downstream = self.downstream_protocol(
                    opts.use_downstream_protocol_config, f"{p}.use_downstream_protocol_config"), True
            if opts.HasField("common_http_protocol_options"):
                common, common_path = opts.common_http_protocol_options, f"{p}.common_http_protocol_options"
        self.only(common, common_path, ("idle_timeout", "max_requests_per_connection"))
        max_requests = wrapped(common, "max_requests_per_connection",
                               wrapped(c, "max_requests_per_connection", 0))
        return optional_timeout(common, "idle_timeout", 3600.0), max_requests, http2, downstream

    def downstream_protocol(self, o: Message, path: str) -> model.UpstreamHttp2:
        """use_downstream_protocol_config: the settings of its HTTP/2 upstream connections
        (Envoy's defaults without http2_protocol_options: it uses HTTP/2 for HTTP/2
        requests all the same)."""
        self.only(o, path, ("http_protocol_options", "http2_protocol_options"))
        if o.HasField("http_protocol_options"):
            self.only(o.http_protocol_options, f"{path}.http_protocol_options", ())
        if o.HasField("http2_protocol_options"):
            return self.upstream_http2(o.http2_protocol_options, f"{path}.http2_protocol_options")
        return model.UpstreamHttp2()

    def upstream_http2(self, o: Message, path: str) -> model.UpstreamHttp2:
        """An upstream Http2ProtocolOptions (Envoy's defaults when unset)."""
        self.only(o, path, ("max_concurrent_streams", "initial_stream_window_size",
                            "initial_connection_window_size", "connection_keepalive"))
        windows = {}
        for name in ("initial_stream_window_size", "initial_connection_window_size"):
            value = wrapped(o, name, 268435456)
            if not 65535 <= value <= 2147483647:
                self.error(f"{path}.{name}", "value must be inside range [65535, 2147483647]")
            windows[name] = value
        keepalive = None
        if o.HasField("connection_keepalive"):
            k, kp = o.connection_keepalive, f"{path}.connection_keepalive"
            self.only(k, kp, ("interval", "timeout"))
            if not k.HasField("timeout"):
                self.error(f"{kp}.timeout", "value is required")
            interval = seconds(k.interval) if k.HasField("interval") else 0.0
            # Without an interval Envoy only pings when it sees the connection idle; a
            # timeout alone is accepted here and no PING is sent.
            keepalive = (interval, seconds(k.timeout)) if interval > 0 else None
        return model.UpstreamHttp2(
            max_concurrent_streams=wrapped(o, "max_concurrent_streams", 2147483647),
            initial_stream_window_size=windows["initial_stream_window_size"],
            initial_connection_window_size=windows["initial_connection_window_size"],
            keepalive=keepalive)

    def load_assignment(self, la: Message, path: str, ctype: str) -> tuple[model.Endpoint, ...]:
        """A ClusterLoadAssignment (a cluster's load_assignment, or an EDS resource)."""
        self.only(la, path, ("cluster_name", "endpoints", "policy"))
        policy = self.assignment_policy(la, path)
        weights = self.locality_weights(la, path)
        out: list[model.Endpoint] = []
        for i, lle in enumerate(la.endpoints):
            lp = f"{path}.endpoints[{i}]"
            self.only(lle, lp, ("locality", "lb_endpoints", "load_balancing_weight", "priority"))
            loc = model.Locality(lle.locality.region, lle.locality.zone, lle.locality.sub_zone)
            loc_weight = weights.get((lle.priority, loc), 0)
            for j, lbe in enumerate(lle.lb_endpoints):
                ep = f"{lp}.lb_endpoints[{j}]"
                self.only(lbe, ep, ("endpoint", "health_status", "load_balancing_weight", "metadata"))
                self.only(lbe.endpoint, f"{ep}.endpoint", ("address", "hostname", "health_check_config"))
                # Per-endpoint health check overrides (port_value, hostname, ...): not yet.
                self.only(lbe.endpoint.health_check_config, f"{ep}.endpoint.health_check_config", ())
                address = self.socket_address(lbe.endpoint.address, f"{ep}.endpoint.address")
                if address is None:
                    continue
                weight = wrapped(lbe, "load_balancing_weight", 1)
                if weight < 1:
                    self.error(f"{ep}.load_balancing_weight", "value must be greater than or equal to 1")
                status = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING",
                          4: "TIMEOUT", 5: "DEGRADED"}[lbe.health_status]
                out.append(model.Endpoint(address, weight, status, lbe.endpoint.hostname,
                                          lle.priority, loc, loc_weight, policy,
                                          endpoint_hash_key(lbe)))
        if ctype == "STRICT_DNS":
            return tuple(out)
        for e in out:
            if not _is_ip(e.address.address):
                self.error(path, f"{ctype} cluster endpoint {e.address.address!r} is not an IP "
                           "address (use STRICT_DNS)")
        return tuple(out)

    def assignment_policy(self, la: Message, path: str) -> model.AssignmentPolicy:
        """ClusterLoadAssignment.policy (drop_overloads and endpoint_stale_after: rejected)."""
        if not la.HasField("policy"):
            return model.DEFAULT_ASSIGNMENT_POLICY
        p = la.policy
        self.only(p, f"{path}.policy", ("overprovisioning_factor", "weighted_priority_health"))
        factor = wrapped(p, "overprovisioning_factor", 140)
        if factor <= 0:
            self.error(f"{path}.policy.overprovisioning_factor", "value must be greater than 0")
        return model.AssignmentPolicy(factor, p.weighted_priority_health)

    def locality_weights(self, la: Message, path: str) -> dict[tuple[int, model.Locality], int]:
        """Each (priority, locality)'s load_balancing_weight, as Envoy's PriorityStateManager
        keeps them: only a LocalityLbEndpoints with both a locality and a weight sets one, and
        a later one of the same locality and priority replaces it."""
        weights: dict[tuple[int, model.Locality], int] = {}
        for i, lle in enumerate(la.endpoints):
            lp = f"{path}.endpoints[{i}]"
            if lle.priority > 128:
                self.error(f"{lp}.priority", "value must be less than or equal to 128")
            if lle.HasField("load_balancing_weight") and lle.load_balancing_weight.value < 1:
                self.error(f"{lp}.load_balancing_weight", "value must be greater than or equal to 1")
            if lle.HasField("locality") and lle.HasField("load_balancing_weight"):
                loc = model.Locality(lle.locality.region, lle.locality.zone, lle.locality.sub_zone)
                weights[(lle.priority, loc)] = lle.load_balancing_weight.value
        return weights




def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
