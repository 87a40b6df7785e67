"""Cluster protobuf -> model: discovery type, load balancing, endpoints, upstream HTTP options."""

from __future__ import annotations

import ipaddress
from typing import Any

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, optional_timeout, seconds, wrapped

HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class ClusterTranslator(TranslatorBase):
    def cluster(self, c: Message, path: str) -> model.Cluster | None:
        self.only(c, path, ("name", "type", "connect_timeout", "lb_policy", "load_assignment",
                            "dns_refresh_rate", "dns_lookup_family", "respect_dns_ttl",
                            "per_connection_buffer_limit_bytes", "common_http_protocol_options",
                            "typed_extension_protocol_options", "max_requests_per_connection",
                            "least_request_lb_config", "metadata", "alt_stat_name",
                            "common_lb_config", "eds_cluster_config", "circuit_breakers"))
        if not c.name:
            self.error(f"{path}.name", "value length must be at least 1 characters")
        ctype = {0: "STATIC", 1: "STRICT_DNS", 3: "EDS"}.get(c.type)
        if c.WhichOneof("cluster_discovery_type") == "cluster_type" or ctype is None:
            self.error(f"{path}.type", "only STATIC, STRICT_DNS and EDS clusters are supported yet")
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
        breakers = self.circuit_breakers(c, path)
        idle, max_requests, http2 = self.upstream_http_options(c, path)
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
            eds_service_name=eds_service_name, eds_config_source=eds_source, http2=http2,
            **breakers)

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

    def upstream_http_options(self, c: Message, path: str) -> tuple[float | None, int, bool]:
        """Idle timeout, max requests per pooled connection (from either place Envoy reads
        them) and whether the cluster speaks HTTP/2."""
        http2 = False
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
                if which == "http2_protocol_options":
                    # The xDS cluster says this; sidecar reaches it with grpcio, and does
                    # not proxy HTTP to it (HTTP/2 upstreams come with issue 5).
                    http2 = True
                    self.only(opts.explicit_http_config.http2_protocol_options,
                              f"{p}.explicit_http_config.http2_protocol_options", ())
                elif which != "http_protocol_options":
                    self.error(f"{p}.explicit_http_config", "only HTTP/1.1 and (for gRPC "
                               "services) HTTP/2 upstreams are supported yet")
                else:
                    self.only(opts.explicit_http_config.http_protocol_options,
                              f"{p}.explicit_http_config.http_protocol_options", ())
            if opts.HasField("common_http_protocol_options"):
                common, common_path = opts.common_http_protocol_options, f"{p}.common_http_protocol_options"
        self.only(common, common_path, ("idle_timeout", "max_requests_per_connection"))
        max_requests = wrapped(common, "max_requests_per_connection",
                               wrapped(c, "max_requests_per_connection", 0))
        return optional_timeout(common, "idle_timeout", 3600.0), max_requests, http2

    def load_assignment(self, la: Message, path: str, ctype: str) -> tuple[model.Endpoint, ...]:
        """A ClusterLoadAssignment (a cluster's load_assignment, or an EDS resource)."""
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
                self.error(path, f"{ctype} cluster endpoint {e.address.address!r} is not an IP "
                           "address (use STRICT_DNS)")
        return tuple(out)




def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
