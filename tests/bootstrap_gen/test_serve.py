"""A proxy started from a generated bootstrap joins the dev control plane and serves the metrics
(:15090 /stats/prometheus) and readiness (:15021 /healthz/ready) ports, side by side with Envoy.

sidecar is started the container way (`sidecar bootstrap --run`), Envoy on the same bootstrap
written to a file; the ports are moved off 15000/15090/15021 with the generator's flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bootstrap_gen.support import KINDS, Proxy, get
from tests.support.proxy import free_port
from tests.xds_server.support import XdsServer, direct, route_config, wait_until, write_yaml

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def write_config(folder: Path, port: int, body: str) -> None:
    """One listener with an RDS route answering `body`, for the xds-server."""
    write_yaml(folder, "listeners.yaml", {"listeners": [{
        "name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": HCM, "stat_prefix": "web",
                             "rds": {"route_config_name": "web",
                                     "config_source": {"ads": {}, "resource_api_version": "V3"}},
                             "http_filters": [{"name": "envoy.filters.http.router",
                                               "typed_config": {"@type": ROUTER}}]}}]}]}]})
    write_yaml(folder, "routes.yaml", {"routes": [route_config("web", [direct("/", body)])]})



@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("xds_host, xds_type", [("127.0.0.1", "delta"), ("localhost", "sotw")])
def test_joins_control_plane_and_serves_metrics_and_readiness(
        tmp_path: Path, kind: str, xds_host: str, xds_type: str) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    web = free_port()
    write_config(folder, web, "hello from xds\n")
    with XdsServer(folder) as server:
        proxy = Proxy(kind, f"{xds_host}:{server.port}", tmp_path, "--xds-type", xds_type)
        with proxy.running():
            proxy.wait_ready()
            # the listener the control plane pushed
            assert get(web, "/") == (200, "hello from xds\n")
            server.wait_for(r"ACK node=sidecar~127\.0\.0\.1~app-1\.demo~demo\.svc\.cluster\.local "
                            r"type=Listener")
            # Prometheus through the static listener to the admin
            status, text = get(proxy.prometheus, "/stats/prometheus")
            assert status == 200
            assert "# TYPE envoy_server_uptime gauge" in text
            assert 'envoy_cluster_upstream_cx_total{envoy_cluster_name="xds-grpc"}' in text
            # only the Istio paths are exposed, not the rest of the admin
            for port, path in ((proxy.prometheus, "/stats"), (proxy.prometheus, "/ready"),
                               (proxy.status, "/ready"), (proxy.status, "/quitquitquit")):
                assert get(port, path)[0] == 404, (port, path)
            assert get(proxy.admin, "/ready") == (200, "LIVE\n")


@pytest.mark.parametrize("kind", KINDS)
def test_not_ready_without_control_plane(tmp_path: Path, kind: str) -> None:
    """initial_fetch_timeout 0s (Istio's): no listeners and clusters yet, so not ready.
    Envoy does not accept on the readiness port at all until then; sidecar answers 503
    (docs/compatibility.md). Both go ready once the control plane comes up."""
    folder = tmp_path / "config"
    folder.mkdir()
    web = free_port()
    write_config(folder, web, "late\n")
    xds_port = free_port()
    proxy = Proxy(kind, f"127.0.0.1:{xds_port}", tmp_path)
    with proxy.running():
        wait_until(lambda: get(proxy.admin, "/ready")[0] == 503, 20, "admin /ready -> 503")
        assert get(proxy.status, "/healthz/ready")[0] in (0, 503)
        with XdsServer(folder, "--port", str(xds_port)):
            proxy.wait_ready()
            assert get(web, "/") == (200, "late\n")
