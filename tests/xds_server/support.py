"""Helpers for the xds-server tests: the real server process, YAML resources, an HTTP upstream,
an Envoy bootstrap that uses ADS, and a small grpcio ADS client.  Every wait is bounded."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import yaml

from tests.support.proxy import HCM, REPO, ROUTER, address

NODE_ID = "sidecar-1"
ADS = {"ads": {}, "resource_api_version": "V3"}
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---- resources as YAML ------------------------------------------------------------------------

def eds_cluster(name: str, connect_timeout: str = "1s") -> dict[str, Any]:
    return {"name": name, "type": "EDS", "connect_timeout": connect_timeout,
            "eds_cluster_config": {"eds_config": ADS}}


def endpoints(cluster: str, *ports: int) -> dict[str, Any]:
    return {"cluster_name": cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(p)}} for p in ports]}]}


def rds_listener(name: str, port: int, route_name: str) -> dict[str, Any]:
    return {"name": name, "address": address(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": HCM, "stat_prefix": name,
                         "rds": {"route_config_name": route_name, "config_source": ADS},
                         "http_filters": [{"name": "envoy.filters.http.router",
                                           "typed_config": {"@type": ROUTER}}]}}]}]}


def route_config(name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}]}


def to_cluster(prefix: str, cluster: str) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


def direct(prefix: str, body: str) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "direct_response": {"status": 200, "body": {"inline_string": body}}}


def write_yaml(folder: Path, name: str, data: Any) -> None:
    """Replace a config file atomically, as editors do, so the server never reads half a file."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / name)


# ---- the xds-server process -------------------------------------------------------------------

class XdsServer:
    """``python -m sidecar xds-server`` on a port it picks itself (--port 0); its log is kept."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.config = config
        self.extra = list(extra)
        self.tmp = tempfile.TemporaryDirectory(prefix="xds-server-test-")
        self.log_path = Path(self.tmp.name) / "xds-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> XdsServer:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "xds-server", "--config", str(self.config),
             "--port", "0", "-l", "info", *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp.name)
        try:
            match = self.wait_for(r"xds-server listening on 127\.0\.0\.1:(\d+)", timeout=20)
        except AssertionError:
            self.__exit__()
            raise
        self.port = int(match.group(1))
        return self

    def output(self, since: int = 0) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[since:]

    def mark(self) -> int:
        """A position in the log; ``output(mark)`` / ``wait_for(..., since=mark)`` look after it."""
        return len(self.output())

    def wait_for(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"xds-server exited with {self.proc.returncode}:\n{self.output()}")
            return re.search(pattern, self.output(since))
        try:
            return wait_until(found, timeout, f"{pattern!r} in the xds-server log")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- xds-server log ---\n{self.output()[-4000:]}") from None

    def stop(self, sig: int | None = None) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.stop()
        self.log.close()
        self.tmp.cleanup()


# ---- an HTTP upstream -------------------------------------------------------------------------

class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = f"upstream {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class Upstream:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering ``upstream <path>``."""

    def __enter__(self) -> Upstream:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_for_body(port: int, path: str, body: str, timeout: float = 10.0) -> None:
    """GET until the response is 200 with ``body`` (Envoy applies xDS updates asynchronously)."""
    last: list[tuple[int, str]] = []

    def check() -> bool:
        last[:] = [http_get(port, path)]
        return last[0] == (200, body)
    try:
        wait_until(check, timeout, f"GET {path} -> 200 {body!r}", interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last response: {last}") from None


# ---- Envoy on ADS -----------------------------------------------------------------------------

def ads_bootstrap(xds_port: int, api_type: str, node: str = NODE_ID, cluster: str = "test",
                  admin_port: int = 0) -> dict[str, Any]:
    """An Envoy bootstrap whose listeners and clusters all come from an ADS server at xds_port
    (the xds cluster speaks HTTP/2, as gRPC needs)."""
    return {
        "node": {"id": node, "cluster": cluster},
        "admin": {"address": address(admin_port)},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": ADS,
            "cds_config": ADS,
        },
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": address(xds_port)}}]}]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_PROTOCOL_OPTIONS,
                    "explicit_http_config": {"http2_protocol_options": {}}}},
        }]},
    }


# ---- a grpcio ADS client ----------------------------------------------------------------------

class AdsClient:
    """One ADS stream (SotW or Delta) driven by hand: ``send`` requests, ``recv`` responses."""

    def __init__(self, port: int, delta: bool = False) -> None:
        from envoy.service.discovery.v3 import ads_pb2_grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.call = method(iter(self.requests.get, None), timeout=60)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as e:
            self.responses.put(e)

    def send(self, request: Any) -> None:
        self.requests.put(request)

    def recv(self, timeout: float = 5.0) -> Any:
        try:
            item = self.responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout}s") from None
        if isinstance(item, Exception):
            raise item
        return item

    def expect_silence(self, wait: float = 0.8) -> None:
        try:
            item = self.responses.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"expected no response, got:\n{item}")

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()
        self.reader.join(5)

    def __enter__(self) -> AdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def names(response: Any) -> list[str]:
    """Resource names in a SotW or Delta response, in the order sent."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    out = []
    for item in response.resources:
        packed = getattr(item, "resource", item)     # Delta wraps each Any in a Resource
        if packed.type_url == CLUSTER:
            message: Any = cluster_pb2.Cluster()
            packed.Unpack(message)
            out.append(message.name)
        else:
            message = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(message)
            out.append(message.cluster_name)
    return out
