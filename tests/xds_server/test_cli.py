"""``python -m sidecar xds-server`` as a process: refusing bad config, reloads, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from tests.support.proxy import REPO
from tests.xds_server.support import CLUSTER, AdsClient, XdsServer, eds_cluster, write_yaml


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "sidecar", "xds-server", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=REPO)


def test_invalid_initial_config_prints_every_error_and_exits_1(tmp_path):
    bad_route = {"name": "r", "virtual_hosts": [{"name": "v", "domainz": []}]}
    write_yaml(tmp_path, "routes.yaml", {"routes": [bad_route]})
    write_yaml(tmp_path, "clusters.yaml", {"clusters": [{"name": "c", "connect_timeout": "soon"}]})
    r = run("--config", str(tmp_path), "--port", "0")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert "error: routes.yaml: routes[0].virtual_hosts[0].domainz: unknown field" in lines
    assert any(line.startswith("error: clusters.yaml: clusters[0].connect_timeout: ")
               for line in lines), r.stderr
    assert "listening" not in r.stderr


def test_config_is_required():
    r = run()
    assert r.returncode == 2 and "--config" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_it_cleanly(tmp_path, sig):
    write_yaml(tmp_path, "c.yaml", {"clusters": [eds_cluster("a")]})
    with XdsServer(tmp_path) as server, AdsClient(server.port) as ads:
        assert "loaded" in server.output() and "1 clusters" in server.output()
        ads.send(DiscoveryRequest(type_url=CLUSTER))
        ads.recv()                      # a stream is open while the server stops
        started = time.monotonic()
        assert server.stop(sig) == 0
        assert time.monotonic() - started < 5
        assert "stopping" in server.output() and "stream closed (sotw)" in server.output()


def test_reload_logs_what_changed_and_survives_bad_files(tmp_path):
    write_yaml(tmp_path, "c.yaml", {"clusters": [eds_cluster("a"), eds_cluster("b")]})
    with XdsServer(tmp_path) as server:
        mark = server.mark()
        write_yaml(tmp_path, "c.yaml",
                   {"clusters": [eds_cluster("b", connect_timeout="5s"), eds_cluster("c")]})
        server.wait_for(r"reloaded .* \(2 clusters, 0 endpoints, 0 listeners, 0 routes\): Cluster: \+c ~b -a",
                        since=mark, timeout=5)
        mark = server.mark()
        write_yaml(tmp_path, "c.yaml", "clusters: {")
        server.wait_for(r"reload of .* failed, still serving the last good config:\n  c\.yaml: invalid YAML",
                        since=mark, timeout=5)
        (tmp_path / "c.yaml").unlink()
        server.wait_for(r"Cluster: -b -c", since=mark, timeout=5)
