"""The RBAC filter at run time: shadow rules counted, then the rules enforced (403).

As Envoy's (source/extensions/filters/http/rbac/rbac_filter.cc): per request the
most specific per-route RBACPerRoute replaces the filter's engines; the shadow
engine (if any) counts shadow_allowed / shadow_denied and never stops the
request; the enforced engine (if any) counts allowed, or denied and answers
403 "RBAC: access denied" with details rbac_access_denied_matched_policy[<the
matching policy, or none>] and no response flag (Envoy 1.40: "-" in %RESPONSE_FLAGS%).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from filters.api import Handler, LocalReply, Request, Response, request_config
from filters.http.rbac.factory import RbacConfig, Rule, Rules
from filters.http.rbac.stats import Counters
from sidecar.http.route_table import headers_match

BODY = b"RBAC: access denied"
FLAG = ""      # Envoy 1.40 sets no response flag (checked: %RESPONSE_FLAGS% is "-")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(address: Any) -> IpAddress | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address[0] if isinstance(address, tuple) else address)
    except ValueError:
        return None
    # A dual-stack listener's IPv4 peers are IPv4 to Envoy (not ::ffff:a.b.c.d).
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped if mapped is not None else ip


class Facts:
    """What the rules of one request look at, addresses parsed on first use."""

    __slots__ = ("request", "use_remote_address", "trusted_hops", "_cache")

    def __init__(self, request: Request, use_remote_address: bool, trusted_hops: int) -> None:
        self.request = request
        self.use_remote_address = use_remote_address
        self.trusted_hops = trusted_hops
        self._cache: dict[str, Any] = {}

    def ip(self, kind: str) -> IpAddress | None:
        if kind in self._cache:
            return self._cache[kind]   # type: ignore[no-any-return]
        info = self.request.info
        if kind == "destination_ip":
            value = _ip(info.downstream_local_address)
        elif kind == "remote_ip":
            value = self.remote()
        else:   # source_ip, direct_remote_ip: the connection's peer (no PROXY protocol)
            value = _ip(info.downstream_remote_address)
        self._cache[kind] = value
        return value

    def remote(self) -> IpAddress | None:
        """Envoy's downstream remote address: without use_remote_address, the last
        x-forwarded-for entry (after xff_num_trusted_hops), else the peer."""
        peer = _ip(self.request.info.downstream_remote_address)
        if self.use_remote_address and self.trusted_hops == 0:
            return peer
        # With use_remote_address the peer has been appended to x-forwarded-for by now,
        # so skipping xff_num_trusted_hops entries skips the peer plus N - 1, as Envoy.
        xff = self.request.header("x-forwarded-for")
        if not xff:
            return peer
        entries = [e.strip() for e in xff.split(",")]
        if len(entries) <= self.trusted_hops:
            return peer
        return _ip(entries[len(entries) - 1 - self.trusted_hops]) or peer

    def port(self) -> int | None:
        local = self.request.info.downstream_local_address
        return local[1] if isinstance(local, tuple) and len(local) > 1 else None


def matches(rule: Rule, facts: Facts) -> bool:
    kind = rule.kind
    if kind == "any":
        return True
    if kind == "header":
        r = facts.request
        return headers_match((rule.header,), r.headers, r.authority,  # type: ignore[arg-type]
                             r.method, r.path, r.scheme)
    if kind == "url_path":
        path = facts.request.path
        if not path:
            return False
        bare = path.split("?", 1)[0].split("#", 1)[0]
        return rule.string.match(bare)  # type: ignore[union-attr]
    if kind == "and":
        return all(matches(c, facts) for c in rule.children)
    if kind == "or":
        return any(matches(c, facts) for c in rule.children)
    if kind == "not":
        return not matches(rule.children[0], facts)
    if kind == "port":
        port = facts.port()
        return port is not None and rule.ports[0] <= port < rule.ports[1]
    address = facts.ip(kind)
    return address is not None and address in rule.network  # type: ignore[operator]


def evaluate(rules: Rules, facts: Facts) -> tuple[bool, str]:
    """(allowed, the first matching policy's name or "")."""
    matched = ""
    for policy in rules.policies:
        if (any(matches(p, facts) for p in policy.permissions)
                and any(matches(p, facts) for p in policy.principals)):
            matched = policy.name
            break
    if rules.action == "ALLOW":
        return bool(matched), matched
    if rules.action == "DENY":
        return not matched, matched
    return True, matched     # LOG: allowed whatever matched (counted as allowed, as Envoy)


class RbacFilter:
    def __init__(self, config: RbacConfig | None, name: str, http_stats: Any,
                 use_remote_address: bool = False, xff_num_trusted_hops: int = 0) -> None:
        self.config = config or RbacConfig()
        self.name = name                    # the key of its typed_per_filter_config
        self.use_remote_address = use_remote_address
        self.trusted_hops = xff_num_trusted_hops
        # All four counters exist from the start (show 0), as Envoy's.
        self.counters = Counters(http_stats, self.config.rules_stat_prefix,
                                 self.config.shadow_rules_stat_prefix)

    async def __call__(self, request: Request, next: Handler, /) -> Response:
        settings = request_config(request, self.name, self.config, RbacConfig)
        if settings is None:
            return await next(request)
        shadow, rules = settings.shadow_rules, settings.rules
        if shadow is None and rules is None:
            return await next(request)
        facts = Facts(request, self.use_remote_address, self.trusted_hops)
        if shadow is not None:
            if evaluate(shadow, facts)[0]:
                self.counters.shadow.shadow_allowed += 1
            else:
                self.counters.shadow.shadow_denied += 1
        if rules is not None:
            allowed, policy = evaluate(rules, facts)
            if not allowed:
                self.counters.enforced.denied += 1
                raise self.reply(policy or "none")
            self.counters.enforced.allowed += 1
        return await next(request)

    @staticmethod
    def reply(policy: str) -> LocalReply:
        details = f"rbac_access_denied_matched_policy[{policy}]"
        return LocalReply(403, BODY, FLAG, details)     # gRPC-shaped for gRPC by the connection
