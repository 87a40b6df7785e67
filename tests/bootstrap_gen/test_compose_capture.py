"""The docker-compose demo with real traffic capture, in network namespaces instead of containers.

The "app" namespace plays the compose app's network namespace: the example app (as root),
proxy-init's rules with the compose file's flags (none: Istio's defaults), and the proxy
started from environment variables only, with the compose file's XDS_ADDRESS=xds:18000. The
"remote" namespace plays the other containers: the dev xds-server serving examples/compose/config
unchanged, backend-v1 and backend-v2. Names resolve through /etc/netns/<app>/hosts (which
`ip netns exec` mounts over /etc/hosts), as Docker's DNS would. Side by side with Envoy.

The proxy runs with GID 1337 rather than UID 1337 (proxy-init exempts both): the test venv may
live where only root can read it. The image runs it as UID 1337.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.bootstrap_gen.support import KINDS
from tests.support.netns import NetnsPair, netns_skip_reason
from tests.support.proxy import REPO, envoy_binary, free_port
from tests.xds_server.support import wait_until, write_yaml

DEMO = REPO / "examples" / "compose"
PY = sys.executable
BACKEND_V2 = "10.77.0.3"          # a second address on the remote side: both backends use :8080
GET = """
import json, sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=5) as r:
        out = [r.status, r.read().decode()]
except urllib.error.HTTPError as e:
    out = [e.code, e.read().decode()]
except OSError as e:
    out = [0, str(e)]
print(json.dumps(out))
"""


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    with NetnsPair("bg") as pair:
        hosts = Path("/etc/netns") / pair.app.name
        hosts.mkdir(parents=True)
        try:
            (hosts / "hosts").write_text(
                f"127.0.0.1 localhost\n{pair.remote_v4} xds backend backend-v1\n{BACKEND_V2} backend-v2\n")
            mac = json.loads(subprocess.run(
                ["ip", "-n", pair.remote.name, "-j", "link", "show", pair.remote_if],
                capture_output=True, text=True, check=True).stdout)[0]["address"]
            for argv in (["-n", pair.remote.name, "addr", "add", f"{BACKEND_V2}/24", "dev", pair.remote_if],
                         ["-n", pair.app.name, "neigh", "replace", BACKEND_V2, "lladdr", mac,
                          "dev", pair.app_if, "nud", "permanent"]):
                subprocess.run(["ip", *argv], capture_output=True, text=True, check=True)
            yield pair
        finally:
            shutil.rmtree(hosts, ignore_errors=True)
            try:
                hosts.parent.rmdir()           # /etc/netns, if nobody else uses it
            except OSError:
                pass


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("ISTIO_", "POD_", "XDS_", "INSTANCE_")) and "proxy" not in k.lower()}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    out.update(extra)
    return out


def logged(argv: list[str], log: Path) -> list[str]:
    """argv with its output appended to ``log`` (a pipe nobody reads could fill up and block)."""
    return ["sh", "-c", f'exec "$@" >>{log} 2>&1', "sh", *argv]


def get(net: NetnsPair, url: str) -> tuple[int, str]:
    status, body = json.loads(net.remote.run([PY, "-c", GET, url]).stdout)
    return int(status), str(body)


def metric(net: NetnsPair, line_start: str) -> int:
    _, text = get(net, f"http://{net.app_v4}:15090/stats/prometheus")
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


@contextmanager
def proxy(net: NetnsPair, kind: str, tmp: Path) -> Iterator[Any]:
    """The sidecar container's command (`sidecar bootstrap --run`), or Envoy on what it generates."""
    pod = env(XDS_ADDRESS="xds:18000", POD_NAME="app", POD_NAMESPACE="demo",
              ISTIO_METAJSON_LABELS='{"app": "app", "version": "v1"}')
    if kind == "sidecar":
        argv = [PY, "-m", "sidecar", "bootstrap", "--run", "--", "-l", "warning"]
    else:
        path = tmp / "envoy.yaml"
        subprocess.run([PY, "-m", "sidecar", "bootstrap", "-o", str(path)], env=pod, check=True,
                       timeout=30)
        argv = [str(envoy_binary()), "-c", str(path), "-l", "error", "--concurrency", "1",
                "--base-id", str(free_port()), "--disable-hot-restart"]
    log = tmp / f"{kind}.log"
    proc = net.app.spawn(logged(argv, log), group=1337, env=pod, cwd=str(tmp))
    try:
        yield proc, log
    finally:
        net.app.stop(proc)
        net.app.procs.remove(proc)


@pytest.mark.parametrize("kind", KINDS)
def test_compose_demo_with_real_capture(net: NetnsPair, tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "config"
    shutil.copytree(DEMO / "config", folder)
    app_py = str(DEMO / "app.py")
    for name, address in (("backend-v1", net.remote_v4), ("backend-v2", BACKEND_V2)):
        net.remote.spawn([PY, app_py], env=env(NAME=name, BIND=address),
                         ready_line=f"{name} listening on {address}:8080")
    net.remote.spawn(logged([PY, "-m", "sidecar", "xds-server", "--config", str(folder),
                             "--address", net.remote_v4, "--port", "18000"], tmp_path / "xds.log"),
                     env=env(), cwd=str(tmp_path))
    net.app.spawn([PY, app_py], env=env(NAME="app", UPSTREAM_URL="http://backend:8080/"),
                  ready_line="app listening on 0.0.0.0:8080")
    net.app.run([PY, "-m", "sidecar.proxy_init"], cwd=str(REPO), env=env())    # the compose flags

    app_url = f"http://{net.app_v4}:8080"
    with proxy(net, kind, tmp_path) as (_, log):
        try:
            wait_until(lambda: get(net, f"http://{net.app_v4}:15021/healthz/ready") == (200, "LIVE\n"),
                       20, "readiness on :15021 (not captured) says LIVE")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log.read_text(errors='replace')[-3000:]}\n"
                                 f"{(tmp_path / 'xds.log').read_text(errors='replace')[-2000:]}") from None
        inbound = 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="inbound"}'
        assert metric(net, inbound) == 0
        # inbound: the remote calls the app's port; the rules hand it to the sidecar's 15006
        assert get(net, f"{app_url}/") == (200, "hello from app\n")
        assert metric(net, inbound) == 1
        # outbound: the app calls http://backend:8080/; the rules hand it to 15001, the route
        # picks backend-v1
        assert get(net, f"{app_url}/call") == (
            200, "app called http://backend:8080/: 200 hello from backend-v1\n")
        assert metric(net, 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend-v1"}') == 1
        # the walkthrough's edit: the route now says backend-v2, the live traffic follows
        routes = (folder / "routes.yaml").read_text()
        write_yaml(folder, "routes.yaml", routes.replace("cluster: backend-v1 ", "cluster: backend-v2 "))
        wait_until(lambda: get(net, f"{app_url}/call") == (
            200, "app called http://backend:8080/: 200 hello from backend-v2\n"), 10,
            "the app's calls rerouted to backend-v2")
    # without the proxy, captured traffic has nowhere to go: the capture was real
    time.sleep(0.2)
    status, body = get(net, f"{app_url}/")
    assert status == 0 and "refused" in body, (status, body)
