"""The docker-compose demo without Docker: examples/compose/config served by the dev xds-server,
the proxy started from a generated bootstrap, examples/compose/app.py as the app and both
backends. Editing routes.yaml moves the app's calls from backend-v1 to backend-v2, side by
side with Envoy.

What Docker and proxy-init add (network namespaces, iptables capture to 15001 / 15006, DNS
names) is replaced by free loopback ports: the capture listeners' ports are rewritten, the
backends' DNS names become 127.0.0.1, and the app reaches the outbound listener through
http_proxy (urllib then sends `GET http://backend:8080/`, which the proxy routes by the
authority like a captured request's Host).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.bootstrap_gen.support import KINDS, Proxy, get
from tests.support.proxy import REPO, envoy_binary, free_ports
from tests.xds_server.support import XdsServer, wait_until, write_yaml

DEMO = REPO / "examples" / "compose"


@contextmanager
def app(name: str, port: int, **env: str) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, str(DEMO / "app.py")],
                            env=dict(os.environ, NAME=name, PORT=str(port), **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: get(port, "/")[0] == 200, 10, f"{name} listening")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def local_config(folder: Path, ports: dict[str, int]) -> None:
    """examples/compose/config with loopback ports for the listeners and clusters."""
    for src in sorted((DEMO / "config").glob("*.yaml")):
        data = yaml.safe_load(src.read_text())
        for listener in data.get("listeners", []):
            listener["address"]["socket_address"].update(address="127.0.0.1",
                                                          port_value=ports[listener["name"]])
        for cluster in data.get("clusters", []):
            for group in cluster["load_assignment"]["endpoints"]:
                for lb in group["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"].update(
                        address="127.0.0.1", port_value=ports[cluster["name"]])
        write_yaml(folder, src.name, data)


@pytest.mark.parametrize("kind", KINDS)
def test_editing_routes_reroutes_live_traffic(tmp_path: Path, kind: str) -> None:
    names = ["virtualOutbound", "virtualInbound", "inbound-app", "backend-v1", "backend-v2"]
    ports = dict(zip(names, free_ports(len(names))))
    folder = tmp_path / "config"
    folder.mkdir()
    local_config(folder, ports)
    proxy_env = {"http_proxy": f"http://127.0.0.1:{ports['virtualOutbound']}", "no_proxy": ""}
    with app("backend-v1", ports["backend-v1"]), app("backend-v2", ports["backend-v2"]), \
            app("app", ports["inbound-app"], UPSTREAM_URL="http://backend:8080/", **proxy_env), \
            XdsServer(folder) as server:
        proxy = Proxy(kind, f"127.0.0.1:{server.port}", tmp_path)
        with proxy.running():
            proxy.wait_ready()
            # inbound: a call to the app through the inbound capture listener
            assert get(ports["virtualInbound"], "/") == (200, "hello from app\n")
            # outbound: the app's call to http://backend:8080/ goes where routes.yaml says
            calls = ports["inbound-app"]
            assert get(calls, "/call") == (
                200, "app called http://backend:8080/: 200 hello from backend-v1\n")
            routes = folder / "routes.yaml"
            text = routes.read_text()
            assert "cluster: backend-v1" in text
            write_yaml(folder, "routes.yaml", text.replace("cluster: backend-v1", "cluster: backend-v2"))
            wait_until(lambda: get(calls, "/call") == (
                200, "app called http://backend:8080/: 200 hello from backend-v2\n"), 10,
                "the app's calls rerouted to backend-v2")
            # the proxy's own view: the call went through the outbound listener's HCM
            status, metrics = get(proxy.prometheus, "/stats/prometheus")
            assert status == 200
            assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend-v2"} 1' in metrics


@pytest.mark.parametrize("kind", KINDS)
def test_example_config_validates_as_is(tmp_path: Path, kind: str) -> None:
    """The folder unchanged (compose DNS names, ports 15001 / 15006) as static resources of the
    bootstrap the sidecar container generates: `--mode validate` in both proxies."""
    env = dict(os.environ, XDS_ADDRESS="xds:18000", POD_NAME="app", POD_NAMESPACE="demo",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    generated = subprocess.run([sys.executable, "-m", "sidecar", "bootstrap"], env=env,
                               capture_output=True, text=True, check=True, timeout=30).stdout
    config = yaml.safe_load(generated)
    for src in sorted((DEMO / "config").glob("*.yaml")):
        data = yaml.safe_load(src.read_text())
        for key in ("listeners", "clusters"):
            config["static_resources"][key] += data.get(key, [])
    assert len(config["static_resources"]["listeners"]) == 4
    assert len(config["static_resources"]["clusters"]) == 5
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    if kind == "envoy":
        command = [str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "error"]
    else:
        command = [sys.executable, "-m", "sidecar", "--mode", "validate", "-c", str(path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
