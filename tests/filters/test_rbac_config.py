"""RBAC config: RBAC / RBACPerRoute parsing, rejections by path, per-route configs, the
stats names, and the rules evaluated directly (addresses, ports, IPv6)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from config import model
from filters.api import LocalReply
from filters.http.rbac.factory import Policy, RbacConfig, Rule, Rules
from filters.http.rbac.filter import RbacFilter
from filters.registry import http_filter_factory
from sidecar.http.message import Request, Response
from sidecar.stats import HttpStats, StatsStore
from tests.filters.filter_support import FILTER_CONFIG, filter_listener, route
from tests.filters.rbac_support import (ANY, NAME, RBAC, RBAC_PER_ROUTE, cidr, path,
                                        per_route, policy, rbac, rules)
from tests.support.proxy import bootstrap, static_cluster
from tests.config.test_translate import errors_of as config_errors, translate


FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
TYPED = f"{FILTER}.http_filters[0].typed_config"
UNSUPPORTED = "not supported by sidecar yet (see docs/compatibility.md)"
P = f"{TYPED}.rules.policies[p]"


def config_of(rbac_config: dict, routes: list | None = None) -> dict:
    return bootstrap([filter_listener("web", [(NAME, rbac_config)], routes=routes)],
                     [static_cluster("up", 9)])


def hcm_of(config: dict):
    return translate(config).listeners[0].filter_chain.filter


def parsed(rbac_config: dict) -> RbacConfig:
    return hcm_of(config_of(rbac_config)).http_filters[0].config


def errors_of(rbac_config: dict, routes: list | None = None) -> list[str]:
    return config_errors(config_of(rbac_config, routes))


def test_registered_by_name_and_both_type_urls():
    factory = http_filter_factory(NAME, "")
    assert factory is not None
    assert http_filter_factory("", RBAC) is factory
    assert http_filter_factory("", RBAC_PER_ROUTE) is factory


def test_parse_sorts_policies_by_name():
    c = parsed(rbac(rules("DENY", zeta=policy([path(exact="/z")]),
                          alpha=policy(principals=[cidr("remote_ip", "10.1.2.3", 8)])),
                    shadow=rules("ALLOW"), rules_stat_prefix="r_",
                    shadow_rules_stat_prefix="s_", track_per_rule_stats=False))
    assert c.rules is not None and c.rules.action == "DENY"
    assert [p.name for p in c.rules.policies] == ["alpha", "zeta"]
    alpha = c.rules.policies[0]
    assert alpha.permissions == (Rule("any"),)
    assert alpha.principals == (Rule("remote_ip", network=ipaddress.ip_network("10.0.0.0/8")),)
    assert c.shadow_rules == Rules("ALLOW", ())
    assert (c.rules_stat_prefix, c.shadow_rules_stat_prefix, c.per_route) == ("r_", "s_", False)
    assert parsed({"@type": RBAC}) == RbacConfig()


def test_cidr_prefix_len_is_clamped_and_defaults_to_zero():
    c = parsed(rbac(rules("ALLOW", p=policy(principals=[
        cidr("source_ip", "10.1.1.1", 40), {"direct_remote_ip": {"address_prefix": "::1"}}]))))
    assert [r.network for r in c.rules.policies[0].principals] == [  # type: ignore[union-attr]
        ipaddress.ip_network("10.1.1.1/32"), ipaddress.ip_network("::/0")]


@pytest.mark.parametrize("config,error", [
    (rbac(rules("ALLOW", p={"permissions": [], "principals": [ANY]})),
     f"{P}.permissions: value must contain at least 1 item(s)"),
    (rbac(rules("ALLOW", p={"permissions": [ANY], "principals": []})),
     f"{P}.principals: value must contain at least 1 item(s)"),
    (rbac(rules("ALLOW", p=policy([{}]))), f"{P}.permissions[0]: rule: value is required"),
    (rbac(rules("ALLOW", p=policy(principals=[{}]))),
     f"{P}.principals[0]: identifier: value is required"),
    (rbac(rules("ALLOW", p=policy([{"any": False}]))),
     f"{P}.permissions[0].any: value must equal true"),
    (rbac(rules("ALLOW", p=policy([{"and_rules": {"rules": []}}]))),
     f"{P}.permissions[0].and_rules.rules: value must contain at least 1 item(s)"),
    (rbac(rules("ALLOW", p=policy([{"destination_port": 70000}]))),
     f"{P}.permissions[0].destination_port: value must be less than or equal to 65535"),
    (rbac(rules("ALLOW", p=policy([{"header": {"name": ""}}]))),
     f"{P}.permissions[0].header.name: value length must be at least 1 characters"),
    (rbac(rules("ALLOW", p=policy(principals=[cidr("remote_ip", "300.1.1.1", 8)]))),
     f"{P}.principals[0].remote_ip.address_prefix: malformed IP address: 300.1.1.1"),
    (rbac(rules("ALLOW", p=policy(principals=[cidr("remote_ip", "10.0.0.0", 129)]))),
     f"{P}.principals[0].remote_ip.prefix_len: value must be less than or equal to 128"),
    (rbac(rules("ALLOW", p=policy([{"requested_server_name": {"exact": "a"}}]))),
     f"{P}.permissions[0].requested_server_name: {UNSUPPORTED}"),
    (rbac(rules("ALLOW", p=policy([{"metadata": {"filter": "f", "path": [{"key": "k"}],
                                                 "value": {"present_match": True}}}]))),
     f"{P}.permissions[0].metadata: {UNSUPPORTED}"),
    (rbac(rules("ALLOW", p=policy(principals=[
        {"or_ids": {"ids": [ANY, {"authenticated": {"principal_name": {"exact": "spiffe://a"}}}]}}]))),
     f"{P}.principals[0].or_ids.ids[1].authenticated: {UNSUPPORTED}"),
    (rbac(rules("ALLOW", p=policy(principals=[{"not_id": {"filter_state": {"key": "k"}}}]))),
     f"{P}.principals[0].not_id.filter_state: {UNSUPPORTED}"),
    (rbac(rules("ALLOW", p={**policy(), "condition": {"const_expr": {"bool_value": True}}})),
     f"{P}.condition: {UNSUPPORTED}"),
    (rbac(rules("ALLOW", p=policy([path(safe_regex={"regex": "("})]))),
     f"{P}.permissions[0].url_path.path.safe_regex.regex: invalid RE2 regex"),
    (rbac(rules("ALLOW"), matcher={}), f"{TYPED}.matcher: {UNSUPPORTED}"),
    (rbac(track_per_rule_stats=True), f"{TYPED}.track_per_rule_stats: per-policy stats are "
                                      "not supported by sidecar yet (see docs/compatibility.md)"),
    (rbac(shadow=rules("ALLOW", p=policy([{"uri_template": {}}]))),
     f"{TYPED}.shadow_rules.policies[p].permissions[0].uri_template: {UNSUPPORTED}"),
])
def test_rejections_name_their_path(config, error):
    errors = errors_of(config)
    assert any(e.startswith(error) for e in errors), errors


def test_per_route_configs():
    routes = [route("/a", typed_per_filter_config={NAME: per_route()}),
              route("/b", typed_per_filter_config={NAME: per_route(rbac(
                  rules("DENY"), shadow=rules("ALLOW")))}),
              route("/c", typed_per_filter_config={NAME: {"@type": FILTER_CONFIG,
                                                          "disabled": True}}),
              route("/d", typed_per_filter_config={NAME: {"@type": RBAC}}),
              route("/")]
    hcm = hcm_of(config_of(rbac(rules("ALLOW")), routes))
    configs = [dict(r.typed_per_filter_config).get(NAME)
               for r in hcm.route_config.virtual_hosts[0].routes]
    assert configs[0] == RbacConfig(per_route=True)
    assert configs[1] == RbacConfig(Rules("DENY", ()), Rules("ALLOW", ()), per_route=True)
    assert configs[2] is model.FILTER_DISABLED
    assert configs[3] == RbacConfig(per_route=True)     # an empty RBAC unpacks as RBACPerRoute
    assert configs[4] is None


def test_wrong_message_types_as_envoy():
    errors = errors_of(rbac(rules("ALLOW")), [route("/", typed_per_filter_config={
        NAME: rbac(rules("DENY"))})])
    assert any(e.endswith("Unable to unpack as envoy.extensions.filters.http.rbac.v3."
                          "RBACPerRoute") for e in errors), errors
    errors = errors_of(per_route(rbac(rules("ALLOW"))))
    assert any(e.endswith("Unable to unpack as envoy.extensions.filters.http.rbac.v3.RBAC")
               for e in errors), errors
    assert parsed({"@type": RBAC_PER_ROUTE}) == RbacConfig()


def test_per_route_rbac_rejections_name_their_path():
    errors = errors_of(rbac(), [route("/", typed_per_filter_config={NAME: per_route(rbac(
        rules("ALLOW", p=policy([{"requested_server_name": {"exact": "a"}}]))))})])
    assert any(".rbac.rules.policies[p].permissions[0].requested_server_name: " in e
               for e in errors), errors


# --- the filter called directly ---------------------------------------------------

def run(config: RbacConfig, peer: tuple = ("127.0.0.1", 5000), local: tuple = ("127.0.0.1", 8080),
        path_: str = "/", headers: list | None = None, http: HttpStats | None = None,
        use_remote_address: bool = False) -> int:
    request = Request("GET", path_, "example.com", "http", headers or [], None)
    request.info.downstream_remote_address = peer
    request.info.downstream_local_address = local

    async def next_(r: Request) -> Response:
        return Response(200, [], b"")

    f = RbacFilter(config, NAME, http or HttpStats("t"), use_remote_address)
    try:
        return asyncio.run(f(request, next_)).status
    except LocalReply as reply:
        return reply.status


def allow(*rules_: Rule, principals: tuple[Rule, ...] = (Rule("any"),)) -> RbacConfig:
    return RbacConfig(Rules("ALLOW", (Policy("p", rules_ or (Rule("any"),), principals),)))


def test_destination_port_range_and_ip():
    assert run(allow(Rule("port", ports=(8000, 9000)))) == 200
    assert run(allow(Rule("port", ports=(8081, 9000)))) == 403
    dest = Rule("destination_ip", network=ipaddress.ip_network("127.0.0.0/8"))
    assert run(allow(dest)) == 200
    assert run(allow(dest), local=("::1", 8080)) == 403


def test_ipv6_and_families_never_cross():
    v6 = Rule("direct_remote_ip", network=ipaddress.ip_network("fd00::/8"))
    assert run(allow(principals=(v6,))) == 403
    assert run(allow(principals=(v6,)), peer=("fd00::1", 1, 0, 0)) == 200
    everything4 = Rule("source_ip", network=ipaddress.ip_network("0.0.0.0/0"))
    assert run(allow(principals=(everything4,)), peer=("::1", 1, 0, 0)) == 403
    assert run(allow(principals=(everything4,)), peer=("::ffff:10.1.1.1", 1, 0, 0)) == 200


def test_remote_ip_and_use_remote_address():
    tens = allow(principals=(Rule("remote_ip", network=ipaddress.ip_network("10.0.0.0/8")),))
    xff = [("x-forwarded-for", "10.0.0.1")]
    assert run(tens, headers=xff) == 200
    assert run(tens, headers=xff, use_remote_address=True) == 403
    assert run(tens, headers=[("x-forwarded-for", "junk")]) == 403   # not an address: the peer


def test_stats_exist_from_the_start_and_are_shared():
    store = StatsStore()
    http = store.http_scope("web")
    RbacFilter(RbacConfig(rules_stat_prefix="enf_", shadow_rules_stat_prefix="dry."), NAME, http)
    RbacFilter(RbacConfig(), NAME, http)
    names = sorted(base + stat for scope in http.filters.values()
                   for base in [scope.dotted_base] for stat, _, _ in scope.values())
    assert names == ["http.web.rbac.allowed", "http.web.rbac.denied",
                     "http.web.rbac.dry.shadow_allowed", "http.web.rbac.dry.shadow_denied",
                     "http.web.rbac.enf_.allowed", "http.web.rbac.enf_.denied",
                     "http.web.rbac.shadow_allowed", "http.web.rbac.shadow_denied"]
    assert run(RbacConfig(Rules("DENY", ())), http=http) == 200
    assert run(RbacConfig(Rules("ALLOW", ()), rules_stat_prefix="enf_",
                          shadow_rules_stat_prefix="dry."), http=http) == 403
    values = {base + stat: v for scope in http.filters.values()
              for base in [scope.dotted_base] for stat, v, _ in scope.values()}
    assert values["http.web.rbac.allowed"] == 1 and values["http.web.rbac.enf_.denied"] == 1
