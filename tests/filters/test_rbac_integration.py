"""The RBAC filter side by side: the same bootstrap under sidecar and the real Envoy 1.40,
and every assertion must hold for both (the expectations are Envoy's)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.filters.filter_support import FILTER_CONFIG, KINDS, filter_listener, get, route
from tests.filters.rbac_support import (ANY, NAME, cidr, header, path, per_route, policy, rbac,
                                        rules)
from tests.support.proxy import ProxyProcess, bootstrap, static_cluster, vhost
from tests.support.upstream import Upstream

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
BODY = b"RBAC: access denied"


def one(name: str, config: dict | None, **kw: Any) -> dict[str, Any]:
    return filter_listener(name, [(NAME, config)], **kw)


def rbac_config(port: int, logs: Path) -> dict:
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(logs / "rbac.log"), "log_format": {"text_format":
            "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}]
    return bootstrap([
        one("allow", rbac(rules("ALLOW",
                                gets=policy([header(":method", "GET")]),
                                public=policy([path(prefix="/public")]))),
            access_log=access_log),
        one("header", rbac(rules("ALLOW", alice=policy(principals=[header("x-user", "alice")])))),
        one("source", rbac(rules("ALLOW", local=policy(
            principals=[cidr("direct_remote_ip", "127.0.0.1", 32)])))),
        one("source-out", rbac(rules("ALLOW", tens=policy(
            principals=[cidr("source_ip", "10.0.0.0", 8), cidr("remote_ip", "192.168.0.0", 16)])))),
        one("deny", rbac(rules("DENY",
                               b_admin=policy([path(prefix="/admin")]),
                               a_admin_x=policy([path(exact="/admin/x")]),
                               local=policy([header("x-evil", present_match=True)],
                                            [cidr("remote_ip", "127.0.0.0", 8)]))),
            access_log=access_log),
        one("combos", rbac(rules("ALLOW", combo=policy(
            [{"and_rules": {"rules": [header(":method", "GET"),
                                      {"not_rule": path(prefix="/secret")}]}},
             {"or_rules": {"rules": [header("x-a", present_match=True),
                                     path(suffix=".css")]}}],
            [{"and_ids": {"ids": [ANY, {"not_id": cidr("source_ip", "10.0.0.0", 8)}]}},
             {"or_ids": {"ids": [header("x-never", "1")]}}])))),
        one("ports", rbac(rules("DENY", no_port_1=policy(
            [{"not_rule": {"destination_port": 1}}],
            [cidr("direct_remote_ip", "::", 0), header("x-ports", "yes")])))),
        one("shadow", rbac(shadow=rules("ALLOW", ok=policy(principals=[header("x-ok", "1")])))),
        one("prefixed", rbac(rules("DENY", bad=policy([path(prefix="/bad")])),
                             shadow=rules("DENY", all=policy()),
                             rules_stat_prefix="enf_", shadow_rules_stat_prefix="dry.run")),
        *[one(name, rbac(rules("ALLOW", tens=policy(
            principals=[cidr("remote_ip", "10.0.0.0", 8)]))), **hcm)
          for name, hcm in (("xff-edge", {"use_remote_address": True}),
                            ("xff-edge-hop", {"use_remote_address": True,
                                              "xff_num_trusted_hops": 1}),
                            ("xff-hop", {"xff_num_trusted_hops": 1}))],
        one("log", rbac(rules("LOG", p=policy([path(prefix="/l")])),
                        shadow=rules("LOG", p=policy([path(prefix="/l")])))),
        one("generated", rbac(rules("DENY", rid=policy([header("x-request-id",
                                                               present_match=True)])))),
        one("pseudo", rbac(rules("ALLOW", a=policy([header(":authority", "example.com")]),
                                 h=policy([header("host", "other.com")]),
                                 s=policy([header(":scheme", "http"), header(":path", "/q?x=1")],
                                          [header("x-scheme", "1")])))),
        one("vhost-off", rbac(rules("ALLOW")), vhosts=[{**vhost([route("/")]),
                                                      "typed_per_filter_config": {
                                                          NAME: per_route()}}]),
        one("routes", rbac(rules("ALLOW")), routes=[
            route("/open", typed_per_filter_config={NAME: per_route()}),
            route("/own", typed_per_filter_config={NAME: per_route(rbac(
                rules("ALLOW", ok=policy([path(exact="/own/ok")]))))}),
            route("/shadow-only", typed_per_filter_config={NAME: per_route(rbac(
                shadow=rules("DENY", all=policy())))}),
            route("/off", typed_per_filter_config={
                NAME: {"@type": FILTER_CONFIG, "disabled": True}}),
            route("/")]),
    ], [static_cluster("up", port)])


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with tempfile.TemporaryDirectory(prefix="rbac-logs-") as tmp, Upstream() as up:
        with ProxyProcess(rbac_config(up.port, Path(tmp)), kind=request.param,
                          extra_args=["--file-flush-interval-msec", "50"]) as p:
            p.upstream = up
            p.logs = Path(tmp)
            yield p


def rbac_stats(proxy, prefix: str) -> dict[str, int]:
    return {k.split(".rbac.", 1)[1]: v for k, v in proxy.stats().items()
            if k.startswith(f"http.{prefix}.rbac.")}


def reached(proxy, target: str) -> int:
    return sum(1 for r in proxy.upstream.requests if r.target == target)


def log_line(proxy, target: str) -> str:
    deadline = time.monotonic() + 5
    while True:
        file = proxy.logs / "rbac.log"
        lines = [l for l in file.read_text().splitlines() if l.split(" ")[0] == target] \
            if file.exists() else []
        if lines or time.monotonic() > deadline:
            return lines[0] if lines else ""
        time.sleep(0.05)


def status(proxy, listener: str, target: str = "/", **kw: Any) -> int:
    return get(proxy, listener, target, **kw).status


ZERO = {"allowed": 0, "denied": 0, "shadow_allowed": 0, "shadow_denied": 0}


def test_allow_by_method_and_path_denies_with_envoys_reply(proxy):
    assert rbac_stats(proxy, "allow") == ZERO
    assert status(proxy, "allow", "/get-a") == 200
    r = get(proxy, "allow", "/post-a", method="POST", body=b"x")
    assert (r.status, r.body, r.header("content-type")) == (403, BODY, "text/plain")
    assert reached(proxy, "/post-a") == 0
    assert log_line(proxy, "/post-a") == \
        "/post-a 403 - rbac_access_denied_matched_policy[none]"
    assert status(proxy, "allow", "/public/x?y=1", method="POST", body=b"x") == 200
    assert status(proxy, "allow", "/x?/public", method="DELETE") == 403   # no query in url_path
    assert rbac_stats(proxy, "allow") == {**ZERO, "allowed": 2, "denied": 2}


def test_allow_by_header(proxy):
    assert status(proxy, "header", "/h", headers={"x-user": "alice"}) == 200
    assert status(proxy, "header", "/h", headers={"x-user": "bob"}) == 403
    assert status(proxy, "header", "/h") == 403
    r = get(proxy, "header", "/h", method="HEAD")
    assert (r.status, r.body, r.header("content-length")) == (403, b"", "19")


def test_allow_by_source_ip(proxy):
    assert status(proxy, "source", "/s") == 200
    assert status(proxy, "source-out", "/s") == 403
    # remote_ip follows x-forwarded-for (use_remote_address is off): 192.168.1.1 is let in.
    assert status(proxy, "source-out", "/s", headers={"x-forwarded-for": "192.168.1.1"}) == 200
    assert status(proxy, "source-out", "/s", headers={"x-forwarded-for": "192.168.1.1, 1.2.3.4"}) \
        == 403


@pytest.mark.parametrize("listener,expected", [
    ("xff-edge", [403, 403, 403, 403]),
    ("xff-edge-hop", [200, 403, 200, 403]),      # the peer appended, then one hop trusted
    ("xff-hop", [403, 200, 403, 403])])
def test_remote_ip_follows_use_remote_address_and_trusted_hops(proxy, listener, expected):
    got = [status(proxy, listener, "/x", headers={"x-forwarded-for": xff} if xff else {})
           for xff in ("10.1.1.1", "10.1.1.1,1.2.3.4", "1.2.3.4,10.1.1.1", None)]
    assert got == expected


def test_deny_mode_reports_the_first_policy_by_name(proxy):
    assert status(proxy, "deny", "/fine") == 200
    for target, name in (("/admin/x", "a_admin_x"), ("/admin/y", "b_admin")):
        r = get(proxy, "deny", target)
        assert (r.status, r.body) == (403, BODY)
        assert log_line(proxy, target) == \
            f"{target} 403 - rbac_access_denied_matched_policy[{name}]"
    assert status(proxy, "deny", "/evil", headers={"x-evil": "1"}) == 403
    assert status(proxy, "deny", "/evil2", headers={"x-evil": "1",
                                                    "x-forwarded-for": "10.1.1.1"}) == 200
    assert rbac_stats(proxy, "deny") == {**ZERO, "allowed": 2, "denied": 3}


def test_and_or_not(proxy):
    assert status(proxy, "combos", "/page") == 200
    assert status(proxy, "combos", "/page", method="HEAD") == 403
    assert status(proxy, "combos", "/secret/x") == 403
    assert status(proxy, "combos", "/secret/x", headers={"x-a": ""}) == 200
    assert status(proxy, "combos", "/secret/x.css", method="PUT", body=b"") == 200
    assert status(proxy, "ports", "/p") == 200
    assert status(proxy, "ports", "/p", headers={"x-ports": "yes"}) == 403


def test_shadow_rules_count_without_enforcing(proxy):
    assert status(proxy, "shadow", "/a", headers={"x-ok": "1"}) == 200
    assert status(proxy, "shadow", "/b") == 200
    assert status(proxy, "shadow", "/c") == 200
    assert rbac_stats(proxy, "shadow") == {**ZERO, "shadow_allowed": 1, "shadow_denied": 2}


def test_log_action_allows_and_counts_allowed(proxy):
    assert [status(proxy, "log", t) for t in ("/l", "/x", "/l2")] == [200, 200, 200]
    assert rbac_stats(proxy, "log") == {"allowed": 3, "denied": 0, "shadow_allowed": 3,
                                        "shadow_denied": 0}


def test_stat_prefixes(proxy):
    assert status(proxy, "prefixed", "/good") == 200
    assert status(proxy, "prefixed", "/bad") == 403
    # Envoy joins a prefix with a "." unless it ends with one.
    assert rbac_stats(proxy, "prefixed") == {"enf_.allowed": 1, "enf_.denied": 1,
                                             "dry.run.shadow_allowed": 0,
                                             "dry.run.shadow_denied": 2}
    _, text = proxy.admin("/stats/prometheus")
    assert ('envoy_http_rbac_allowed{envoy_rbac_http_prefix="enf_",'
            'envoy_http_conn_manager_prefix="prefixed"} 1') in text
    assert ('envoy_http_rbac_run_shadow_denied{envoy_rbac_http_prefix="dry",'
            'envoy_http_conn_manager_prefix="prefixed"} 2') in text


def test_per_route_override_and_disable(proxy):
    assert status(proxy, "routes", "/x") == 403
    assert status(proxy, "routes", "/open/x") == 200          # empty RBACPerRoute: no engines
    assert status(proxy, "routes", "/off") == 200             # FilterConfig disabled
    assert status(proxy, "routes", "/own/ok") == 200
    assert status(proxy, "routes", "/own/no") == 403
    assert status(proxy, "routes", "/shadow-only") == 200     # no enforced engine on the route
    assert rbac_stats(proxy, "routes") == {"allowed": 1, "denied": 2, "shadow_allowed": 0,
                                           "shadow_denied": 1}


def test_headers_as_the_connection_manager_left_them(proxy):
    # x-request-id is generated before the filters run: a DENY on its presence denies all.
    assert status(proxy, "generated", "/g") == 403
    assert status(proxy, "pseudo", "/") == 200
    assert status(proxy, "pseudo", "/", host="other.com") == 200     # host is :authority
    assert status(proxy, "pseudo", "/", host="x.com") == 403
    assert status(proxy, "pseudo", "/p", host="x.com", headers={"x-scheme": "1"}) == 200
    assert status(proxy, "pseudo", "/q?x=1", host="x.com", headers={"x-scheme": "1"}) == 200


def test_virtual_host_per_route_config(proxy):
    assert status(proxy, "vhost-off", "/v") == 200
    assert rbac_stats(proxy, "vhost-off") == ZERO


def test_url_path_is_not_normalized(proxy):
    for target in ("/public/../x", "/publicity"):
        assert status(proxy, "allow", target, method="PUT", body=b"") == 200
    for target in ("/a/public", "/Public"):
        assert status(proxy, "allow", target, method="PUT", body=b"") == 403


def test_grpc_denied(proxy):
    r = get(proxy, "header", "/svc/M", method="POST", body=b"",
            headers={"content-type": "application/grpc"})
    assert (r.status, r.header("grpc-status"), r.header("grpc-message")) == (
        200, "7", "RBAC: access denied")


def test_prometheus_names(proxy):
    _, text = proxy.admin("/stats/prometheus")
    assert "# TYPE envoy_http_rbac_allowed counter" in text
    assert 'envoy_http_rbac_allowed{envoy_http_conn_manager_prefix="allow"}' in text
    assert 'envoy_http_rbac_shadow_denied{envoy_http_conn_manager_prefix="shadow"}' in text
