"""Parses envoy.extensions.filters.http.rbac.v3.RBAC (and its per-route RBACPerRoute).

``rules`` (enforced) and ``shadow_rules`` (counted only) are each an
envoy.config.rbac.v3.RBAC: an action (ALLOW or DENY) and named policies; a
policy matches when one of its permissions (what is asked) and one of its
principals (who asks) match. As Envoy's engine, the policies are tried in the
order of their names (a std::map), so the first matching name is the one
reported in the response details.

Per route, RBACPerRoute{rbac} replaces the filter's rules and shadow rules
(an empty RBACPerRoute: neither, the filter does nothing for the route); the
stats stay the filter's (its rules_stat_prefix), as in Envoy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from config import model
from config.errors import ConfigError
from config.matchers import StringMatcher
from config.translate_routes import RouteTranslator
from filters.api import FilterContext, FilterFactory, HttpFilter

RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
RBAC_MESSAGE = "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_MESSAGE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
# LOG allows every request (Envoy sets the access_log_hint dynamic metadata when a policy
# matches; sidecar has no dynamic metadata, and nothing that could read it is accepted).
ACTIONS = {0: "ALLOW", 1: "DENY", 2: "LOG"}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Rule:
    """One Permission or Principal.

    kind: "any", "and", "or", "not" (``children``), "header" (``header``),
    "url_path" (``string``), "port" (``ports``: [start, end)), and the address
    kinds "destination_ip", "source_ip", "direct_remote_ip", "remote_ip" (``network``).
    """

    kind: str
    children: tuple[Rule, ...] = ()
    header: model.HeaderMatcher | None = None
    string: StringMatcher | None = None
    ports: tuple[int, int] = (0, 0)
    network: IpNetwork | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    permissions: tuple[Rule, ...]
    principals: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Rules:
    """envoy.config.rbac.v3.RBAC: the engine of the enforced or the shadow rules."""

    action: str                          # "ALLOW" | "DENY" | "LOG"
    policies: tuple[Policy, ...]         # sorted by name, as Envoy's std::map


@dataclass(frozen=True, slots=True)
class RbacConfig:
    rules: Rules | None = None           # None: nothing enforced
    shadow_rules: Rules | None = None    # None: no shadow engine
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""
    per_route: bool = False              # parsed from an RBACPerRoute (no stats of its own)


class RbacFactory(FilterFactory[RbacConfig]):
    names = ("envoy.filters.http.rbac",)
    type_url = RBAC_URL
    per_route = True
    per_route_type_urls = (PER_ROUTE_URL,)

    def parse(self, message: Message, path: str) -> RbacConfig:
        t = RouteTranslator(lambda name, type_url: None)
        per_route_context = "typed_per_filter_config[" in path
        is_per_route = message.DESCRIPTOR.full_name == PER_ROUTE_MESSAGE
        if per_route_context != is_per_route:
            if message.ListFields():
                # Envoy unpacks a per-route config as RBACPerRoute and the filter config as
                # RBAC, whatever type it came as (an empty one passes as the expected type).
                expected = PER_ROUTE_MESSAGE if per_route_context else RBAC_MESSAGE
                raise ConfigError(path, f"Unable to unpack as {expected}")
            return RbacConfig(per_route=per_route_context)
        if is_per_route:
            t.only(message, path, ("rbac",))
            config = RbacConfig(per_route=True)
            if message.HasField("rbac"):
                inner = self.rbac(t, message.rbac, f"{path}.rbac")
                config = RbacConfig(inner.rules, inner.shadow_rules, per_route=True)
        else:
            config = self.rbac(t, message, path)
        if t.errors:
            raise t.errors[0]
        return config

    def rbac(self, t: RouteTranslator, m: Message, path: str) -> RbacConfig:
        # track_per_rule_stats false is the default: accepted (nothing to count).
        t.only(m, path, ("rules", "rules_stat_prefix", "shadow_rules",
                         "shadow_rules_stat_prefix", "track_per_rule_stats"))
        if m.track_per_rule_stats:
            t.error(f"{path}.track_per_rule_stats",
                    "per-policy stats are not supported by sidecar yet (see docs/compatibility.md)")
        rules = self.rules(t, m.rules, f"{path}.rules") if m.HasField("rules") else None
        shadow = (self.rules(t, m.shadow_rules, f"{path}.shadow_rules")
                  if m.HasField("shadow_rules") else None)
        return RbacConfig(rules, shadow, m.rules_stat_prefix, m.shadow_rules_stat_prefix)

    def rules(self, t: RouteTranslator, m: Message, path: str) -> Rules:
        t.only(m, path, ("action", "policies"))
        action = ACTIONS.get(m.action)
        if action is None:
            t.error(f"{path}.action", "value must be one of the defined enum values")
            action = "ALLOW"
        policies = []
        for name in sorted(m.policies):
            p, pp = m.policies[name], f"{path}.policies[{name}]"
            t.only(p, pp, ("permissions", "principals"))
            if not p.permissions:
                t.error(f"{pp}.permissions", "value must contain at least 1 item(s)")
            if not p.principals:
                t.error(f"{pp}.principals", "value must contain at least 1 item(s)")
            permissions = tuple(self.permission(t, x, f"{pp}.permissions[{i}]")
                                for i, x in enumerate(p.permissions))
            principals = tuple(self.principal(t, x, f"{pp}.principals[{i}]")
                               for i, x in enumerate(p.principals))
            policies.append(Policy(name, permissions, principals))
        return Rules(action, tuple(policies))

    def permission(self, t: RouteTranslator, m: Message, path: str) -> Rule:
        kind = m.WhichOneof("rule")
        p = f"{path}.{kind}"
        if kind is None:
            t.error(path, "rule: value is required")
            return Rule("any")
        if kind == "any":
            if not m.any:
                t.error(p, "value must equal true")
            return Rule("any")
        if kind in ("and_rules", "or_rules"):
            return Rule(kind[:-6], self.rule_set(t, getattr(m, kind).rules, f"{p}.rules",
                                                 self.permission))
        if kind == "not_rule":
            return Rule("not", (self.permission(t, m.not_rule, p),))
        if kind == "header":
            return self.header(t, m.header, p)
        if kind == "url_path":
            return self.url_path(t, m.url_path, p)
        if kind == "destination_port":
            if m.destination_port > 65535:
                t.error(p, "value must be less than or equal to 65535")
            return Rule("port", ports=(m.destination_port, m.destination_port + 1))
        if kind == "destination_port_range":
            t.only(m.destination_port_range, p, ("start", "end"))
            r = m.destination_port_range
            return Rule("port", ports=(r.start, r.end))
        if kind == "destination_ip":
            return self.cidr(t, "destination_ip", m.destination_ip, p)
        t.error(p, "not supported by sidecar yet (see docs/compatibility.md)")
        return Rule("any")

    def principal(self, t: RouteTranslator, m: Message, path: str) -> Rule:
        kind = m.WhichOneof("identifier")
        p = f"{path}.{kind}"
        if kind is None:
            t.error(path, "identifier: value is required")
            return Rule("any")
        if kind == "any":
            if not m.any:
                t.error(p, "value must equal true")
            return Rule("any")
        if kind in ("and_ids", "or_ids"):
            return Rule(kind[:-4], self.rule_set(t, getattr(m, kind).ids, f"{p}.ids",
                                                 self.principal))
        if kind == "not_id":
            return Rule("not", (self.principal(t, m.not_id, p),))
        if kind == "header":
            return self.header(t, m.header, p)
        if kind == "url_path":
            return self.url_path(t, m.url_path, p)
        if kind in ("source_ip", "direct_remote_ip", "remote_ip"):
            return self.cidr(t, kind, getattr(m, kind), p)
        # authenticated needs mTLS (sidecar has no downstream TLS yet); metadata, filter_state...
        t.error(p, "not supported by sidecar yet (see docs/compatibility.md)")
        return Rule("any")

    @staticmethod
    def rule_set(t: RouteTranslator, items: Sequence[Message], path: str,
                 one: Callable[[RouteTranslator, Message, str], Rule]) -> tuple[Rule, ...]:
        if not items:
            t.error(path, "value must contain at least 1 item(s)")
        return tuple(one(t, x, f"{path}[{i}]") for i, x in enumerate(items))

    @staticmethod
    def header(t: RouteTranslator, m: Message, path: str) -> Rule:
        matcher = t.header_matcher(m, path)
        if not m.name:
            t.error(f"{path}.name", "value length must be at least 1 characters")
        return Rule("header", header=matcher) if matcher is not None else Rule("any")

    @staticmethod
    def url_path(t: RouteTranslator, m: Message, path: str) -> Rule:
        t.only(m, path, ("path",))
        if not m.HasField("path"):
            t.error(path, "rule: value is required")
            return Rule("any")
        sm = t.string_matcher(m.path, f"{path}.path")
        return Rule("url_path", string=sm) if sm is not None else Rule("any")

    @staticmethod
    def cidr(t: RouteTranslator, kind: str, m: Message, path: str) -> Rule:
        t.only(m, path, ("address_prefix", "prefix_len"))
        if not m.address_prefix:
            t.error(f"{path}.address_prefix", "value length must be at least 1 characters")
            return Rule("any")
        try:
            address = ipaddress.ip_address(m.address_prefix)
        except ValueError:
            t.error(f"{path}.address_prefix", f"malformed IP address: {m.address_prefix}")
            return Rule("any")
        if m.HasField("prefix_len") and m.prefix_len.value > 128:
            t.error(f"{path}.prefix_len", "value must be less than or equal to 128")
            return Rule("any")
        # Envoy's CidrRange: no prefix_len is 0; a length over the family's width is clamped.
        length = min(m.prefix_len.value, address.max_prefixlen)
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        return Rule(kind, network=network)

    def create(self, config: RbacConfig | None, ctx: FilterContext) -> HttpFilter:
        from filters.http.rbac.filter import RbacFilter
        return RbacFilter(config, ctx.name, ctx.stats, getattr(ctx.hcm, "use_remote_address", False),
                          getattr(ctx.hcm, "xff_num_trusted_hops", 0))
