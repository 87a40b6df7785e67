"""The admin server over real sockets: each endpoint's status, headers and body shape.

Every test starts the admin on 127.0.0.1 port 0 inside its own event loop (the
stock asyncio loop and uvloop), with a real StatsStore and a Bootstrap parsed
from Envoy config, and talks to it with http.client (in a thread) or, for
malformed input, raw asyncio streams.  Expected shapes were taken from Envoy
1.40's admin on the same config.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import uvloop
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf.message import Message

from config.bootstrap import parse_message
from sidecar.admin.server import AdminServer, start_admin
from sidecar.stats import StatsStore

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SECRET_VALUE = "hunter2-do-not-print"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY----- do-not-print"
BOOTSTRAP = {
    "node": {"id": "test-node", "cluster": "test-cluster"},
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    "static_resources": {
        "listeners": [{
            "name": "ingress",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": "ingress_http",
                    "route_config": {"name": "local_route", "virtual_hosts": [{
                        "name": "backend", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                    }]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    }}],
                },
            }]}],
        }],
        "clusters": [{
            "name": "backend", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": 10001}}}}]}]},
        }, {"name": "another", "connect_timeout": "2s", "type": "STATIC", "transport_socket": {
            "name": "envoy.transport_sockets.tls", "typed_config": {   # an Any inside an Any
                "@type": TLS, "common_tls_context": {"tls_certificates": [{
                    "certificate_chain": {"inline_string": "CERT"},
                    "private_key": {"inline_string": PRIVATE_KEY}}]}}}}],
        "secrets": [{"name": "token", "generic_secret": {"secret": {"inline_string": SECRET_VALUE}}}],
    },
}


@dataclass
class Target:
    """A stand-in for the proxy's Server: real stats, real Bootstrap."""

    stats: StatsStore
    bootstrap: Message
    state: str = "LIVE"
    config_updated_at: float = field(default_factory=time.time)
    start_time: float = field(default_factory=lambda: time.time() - 7)
    options: dict[str, Any] = field(default_factory=lambda: {
        "config_path": "/etc/envoy.yaml", "concurrency": 2, "log_level": "info",
        "mode": "serve", "drain_time_s": 600, "base_id": 7, "service_zone": "",
        "sidecar_only_flag": True})
    health_failed: bool = False
    shutdowns: int = 0
    on_shutdown: Callable[[], None] | None = None
    health_calls: list[bool] = field(default_factory=list)

    def dynamic_view(self) -> None:
        return None                     # no xDS here; tests/xds covers the dynamic sections

    def request_shutdown(self) -> None:
        self.shutdowns += 1
        if self.on_shutdown is not None:
            self.on_shutdown()

    def health_check_failed(self, failed: bool) -> None:
        # As sidecar.server.Server does: only the flag; the admin reports DRAINING.
        self.health_calls.append(failed)
        self.health_failed = failed


def make_target() -> Target:
    stats = StatsStore()
    backend = stats.cluster_scope("backend")
    setattr(backend, "upstream_rq_total", 7)   # StatsStore's stats are slots mypy cannot see
    backend.count_response(200)
    backend.count_response(503)
    stats.cluster_scope("another")
    setattr(stats.http_scope("ingress_http"), "downstream_rq_total", 9)
    return Target(stats=stats, bootstrap=parse_message(BOOTSTRAP, Bootstrap))


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 20))
    return runner


@asynccontextmanager
async def serving(target: Target, host: str = "127.0.0.1") -> AsyncIterator[tuple[AdminServer, int]]:
    server = await start_admin(target, host, 0)
    try:
        yield server, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(port: int, path: str, method: str = "GET", host: str = "127.0.0.1") -> Response:
    """One request with the standard library's client, off the event loop."""
    def call() -> Response:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
    return await asyncio.to_thread(call)


async def raw(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send bytes, read until the server closes (True) or goes quiet for 1 s (False)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 1.0)
            if not chunk:
                closed = True
                break
            out += chunk
    except (asyncio.TimeoutError, ConnectionResetError):
        pass
    writer.close()
    return out, closed


ENVOY_HEADERS = {"cache-control": "no-cache, max-age=0", "x-content-type-options": "nosniff"}


def assert_admin_headers(resp: Response, content_type: str) -> None:
    assert resp.headers["content-type"] == content_type
    for name, value in ENVOY_HEADERS.items():
        assert resp.headers[name] == value
    assert int(resp.headers["content-length"]) == len(resp.body)


# --- /ready, /server_info ------------------------------------------------------------

def test_ready_is_200_only_when_live(run: Callable[..., Any]) -> None:
    async def main() -> None:
        target = make_target()
        async with serving(target) as (_, port):
            live = await fetch(port, "/ready")
            assert (live.status, live.text) == (200, "LIVE\n")
            assert_admin_headers(live, "text/plain; charset=UTF-8")
            for state in ("PRE_INITIALIZING", "INITIALIZING", "DRAINING"):
                target.state = state
                resp = await fetch(port, "/ready")
                assert (resp.status, resp.text) == (503, f"{state}\n")
    run(main())


def test_server_info_shape(run: Callable[..., Any]) -> None:
    async def main() -> None:
        target = make_target()
        target.options["service_cluster"] = "from-flag"
        async with serving(target) as (_, port):
            resp = await fetch(port, "/server_info")
        assert resp.status == 200
        assert_admin_headers(resp, "application/json")
        info = resp.json()
        assert list(info)[:6] == ["version", "state", "uptime_current_epoch", "uptime_all_epochs",
                                  "hot_restart_version", "command_line_options"]
        assert info["version"].startswith("sidecar/")
        assert info["state"] == "LIVE"
        assert re.fullmatch(r"\d+s", info["uptime_current_epoch"])
        assert int(info["uptime_all_epochs"][:-1]) >= 7
        options = info["command_line_options"]
        assert options["config_path"] == "/etc/envoy.yaml"
        assert options["concurrency"] == 2
        assert options["base_id"] == "7"            # uint64 prints as a string, as in Envoy
        assert options["drain_time"] == "600s"
        assert options["mode"] == "Serve"
        assert options["service_node"] == ""        # defaults are printed, as Envoy does
        assert "sidecar_only_flag" not in options
        assert info["node"]["id"] == "test-node"
        assert info["node"]["cluster"] == "from-flag"   # --service-cluster wins over the bootstrap
        assert info["node"]["user_agent_name"] == "sidecar"
    run(main())


# --- /config_dump ----------------------------------------------------------------------

def test_config_dump_shape_and_order(run: Callable[..., Any]) -> None:
    async def main() -> Response:
        async with serving(make_target()) as (_, port):
            return await fetch(port, "/config_dump")
    resp = run(main())
    assert resp.status == 200
    assert_admin_headers(resp, "application/json")
    assert resp.text.startswith('{\n "configs": [\n  {\n   "@type"')   # Envoy's 1-space indent
    configs = resp.json()["configs"]
    prefix = "type.googleapis.com/envoy.admin.v3."
    assert [c["@type"] for c in configs] == [prefix + t for t in (
        "BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
        "ScopedRoutesConfigDump", "RoutesConfigDump", "SecretsConfigDump")]
    boot, clusters, listeners, _, routes, secrets = configs
    assert boot["bootstrap"]["node"]["id"] == "test-node"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", boot["last_updated"])
    # Envoy lists static clusters by name.
    assert [c["cluster"]["name"] for c in clusters["static_clusters"]] == ["another", "backend"]
    cluster = clusters["static_clusters"][1]
    assert cluster["cluster"]["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert cluster["cluster"]["connect_timeout"] == "1s"
    assert "last_updated" in cluster
    listener = listeners["static_listeners"][0]["listener"]
    assert listener["@type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["@type"] == HCM and hcm["stat_prefix"] == "ingress_http"   # snake_case names
    route = routes["static_route_configs"][0]["route_config"]
    assert route["@type"] == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    assert route["name"] == "local_route"
    assert route["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "backend"
    secret = secrets["static_secrets"][0]
    assert secret["name"] == "token"
    assert secret["secret"]["generic_secret"]["secret"]["inline_string"] == "[redacted]"
    tls = clusters["static_clusters"][0]["cluster"]["transport_socket"]["typed_config"]
    certificate = tls["common_tls_context"]["tls_certificates"][0]
    assert certificate == {"certificate_chain": {"inline_string": "CERT"},   # not sensitive
                           "private_key": {"inline_string": "[redacted]"}}
    # Redacted wherever they appear, the bootstrap dump included.
    assert SECRET_VALUE not in resp.text and "do-not-print" not in resp.text


def test_config_dump_resource_mask_and_name_regex(run: Callable[..., Any]) -> None:
    async def main() -> dict[str, Response]:
        async with serving(make_target()) as (_, port):
            queries = {
                "resource": "resource=static_clusters",
                "resource_mask": "resource=static_clusters&mask=cluster.name,last_updated",
                "resource_regex": "resource=static_clusters&name_regex=back.*",
                "partial_regex": "resource=static_clusters&name_regex=back",
                "mask": "mask=bootstrap.node.id",
                "unknown": "resource=dynamic_clusters",
                "not_repeated": "resource=bootstrap",
                "bad_mask": "mask=bogus",
                "bad_resource_mask": "resource=static_clusters&mask=cluster.bogus",
                "bad_regex": "name_regex=(",
                "eds": "include_eds",
            }
            return {k: await fetch(port, f"/config_dump?{q}") for k, q in queries.items()}
    r = run(main())
    configs = r["resource"].json()["configs"]
    assert [c["@type"] for c in configs] == [
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"] * 2
    masked = r["resource_mask"].json()["configs"][0]
    assert set(masked) == {"@type", "cluster", "last_updated"}
    assert masked["cluster"] == {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                                 "name": "another"}
    assert [c["cluster"]["name"] for c in r["resource_regex"].json()["configs"]] == ["backend"]
    assert r["partial_regex"].json() == {}           # name_regex must match the whole name
    only_id = r["mask"].json()["configs"]
    assert only_id == [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                        "bootstrap": {"node": {"id": "test-node"}}}]
    assert (r["unknown"].status, r["unknown"].text) == (404, "dynamic_clusters not found in config dump")
    assert r["unknown"].headers["content-type"] == "text/plain"
    assert r["not_repeated"].status == 400
    assert r["not_repeated"].text == ("bootstrap is not a repeated field. "
                                      "Use ?mask=bootstrap to get only this field")
    assert (r["bad_mask"].status, r["bad_mask"].text) == (
        400, "FieldMask bogus could not be successfully applied to any configs.")
    assert r["bad_resource_mask"].status == 400
    assert 'paths: "cluster.bogus"' in r["bad_resource_mask"].text
    assert r["bad_regex"].status == 400
    assert r["bad_regex"].text.startswith("INVALID_ARGUMENT: Error while parsing name_regex from (")
    eds = [c for c in r["eds"].json()["configs"]
           if c["@type"] == "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump"]
    assert [e["endpoint_config"]["cluster_name"] for e in eds[0]["static_endpoint_configs"]] == [
        "another", "backend"]


# --- /stats, /stats/prometheus ------------------------------------------------------

def test_stats_text_json_and_filters(run: Callable[..., Any]) -> None:
    target = make_target()

    async def main() -> dict[str, Response]:
        async with serving(target) as (_, port):
            queries = {"text": "", "json": "format=json", "filter": "filter=" + quote(r"^cluster\.backend\.upstream_rq_\d+$"),
                       "plus": "filter=upstream_rq_2+xx", "invert": "filter=cluster&invert_filter",
                       "used": "usedonly&filter=backend", "counters": "type=Counters&filter=cx_active",
                       "gauges": "type=Gauges&filter=cx_active", "bad_regex": "filter=(",
                       "bad_format": "format=yaml", "bad_type": "type=counters",
                       "html": "format=html"}
            return {k: await fetch(port, f"/stats?{q}") for k, q in queries.items()}
    r = run(main())
    text = r["text"]
    assert text.status == 200
    assert_admin_headers(text, "text/plain; charset=UTF-8")
    lines = text.text.splitlines()
    assert lines == sorted(lines)
    assert dict(line.split(": ") for line in lines) == {
        name: str(value) for name, value, _ in target.stats.dotted()}
    assert "cluster.backend.upstream_rq_total: 7" in lines
    assert_admin_headers(r["json"], "application/json")
    stats = r["json"].json()["stats"]
    assert {"name": "cluster.backend.upstream_rq_total", "value": 7} in stats
    assert [s["name"] for s in stats] == sorted(s["name"] for s in stats)
    assert r["filter"].text == ("cluster.backend.upstream_rq_200: 1\n"
                                "cluster.backend.upstream_rq_503: 1\n")
    # '+' is regex syntax, not a space: Envoy only %-decodes query values.
    assert r["plus"].text == ("cluster.another.upstream_rq_2xx: 0\n"
                              "cluster.backend.upstream_rq_2xx: 1\n")
    assert r["invert"].text and "cluster." not in r["invert"].text
    assert r["used"].text.splitlines() == [
        "cluster.backend.upstream_rq_200: 1", "cluster.backend.upstream_rq_2xx: 1",
        "cluster.backend.upstream_rq_503: 1", "cluster.backend.upstream_rq_5xx: 1",
        "cluster.backend.upstream_rq_completed: 2", "cluster.backend.upstream_rq_total: 7"]
    assert r["counters"].text == ""                  # upstream_cx_active & co are gauges
    assert "cluster.backend.upstream_cx_active: 0" in r["gauges"].text
    assert (r["bad_regex"].status, r["bad_regex"].text) == (400, "Invalid re2 regex: missing ): (")
    assert r["bad_format"].status == 400 and r["bad_format"].text.startswith("usage: /stats?format=")
    assert (r["bad_type"].status, r["bad_type"].text) == (400, "invalid &type= param")
    assert r["html"].status == 400


def test_stats_prometheus(run: Callable[..., Any]) -> None:
    async def main() -> tuple[Response, Response, Response, Response]:
        async with serving(make_target()) as (_, port):
            return (await fetch(port, "/stats/prometheus"),
                    await fetch(port, "/stats/prometheus?filter=upstream_rq_total"),
                    await fetch(port, "/stats?format=prometheus&usedonly"),
                    await fetch(port, "/stats/prometheus?filter=nomatch"))
    full, filtered, used, empty = run(main())
    assert full.status == 200
    # Envoy 1.40 says text/plain; charset=UTF-8 here (not version=0.0.4).
    assert_admin_headers(full, "text/plain; charset=UTF-8")
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 7\n' in full.text
    assert "# TYPE envoy_cluster_upstream_rq_total counter\n" in full.text
    lines = filtered.text.splitlines()
    assert lines[0] == "# TYPE envoy_cluster_upstream_rq_total counter"
    assert sorted(lines[1:]) == [
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="another"} 0',
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 7']
    assert 'envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="backend"} 1' \
        in used.text
    assert 'envoy_cluster_name="another"' not in used.text
    assert (empty.status, empty.text) == (200, "")


# --- mutating endpoints ----------------------------------------------------------------

def test_mutating_endpoints_refuse_get(run: Callable[..., Any]) -> None:
    target = make_target()

    async def main() -> list[Response]:
        async with serving(target) as (_, port):
            return [await fetch(port, path, method) for path, method in (
                ("/quitquitquit", "GET"), ("/healthcheck/fail", "GET"),
                ("/healthcheck/ok", "PUT"))]
    quit_get, fail_get, ok_put = run(main())
    assert (quit_get.status, quit_get.text) == (405, "Method GET not allowed, POST required.")
    assert_admin_headers(quit_get, "text/plain; charset=UTF-8")
    assert (fail_get.status, ok_put.status) == (405, 405)
    assert ok_put.text == "Method PUT not allowed, POST required."
    assert target.shutdowns == 0 and target.health_calls == [] and target.state == "LIVE"


def test_healthcheck_fail_and_ok(run: Callable[..., Any]) -> None:
    target = make_target()

    async def main() -> list[Response]:
        async with serving(target) as (_, port):
            return [await fetch(port, "/healthcheck/fail", "POST"), await fetch(port, "/ready"),
                    await fetch(port, "/healthcheck/ok", "POST"), await fetch(port, "/ready")]
    fail, ready_failed, ok, ready_ok = run(main())
    assert (fail.status, fail.text, ok.status, ok.text) == (200, "OK\n", 200, "OK\n")
    assert_admin_headers(fail, "text/plain; charset=UTF-8")
    assert (ready_failed.status, ready_failed.text) == (503, "DRAINING\n")
    assert target.state == "LIVE"       # the admin derives DRAINING, as Envoy's serverState
    assert (ready_ok.status, ready_ok.text) == (200, "LIVE\n")
    assert target.health_calls == [True, False]


def test_quitquitquit_replies_before_shutting_down(run: Callable[..., Any]) -> None:
    target = make_target()

    async def main() -> Response:
        server = await start_admin(target, "127.0.0.1", 0)
        # The harshest shutdown: drop the admin and its connections at once.
        target.on_shutdown = server.close
        try:
            return await fetch(server.sockets[0].getsockname()[1], "/quitquitquit", "POST")
        finally:
            server.close()
            await server.wait_closed()
    resp = run(main())
    assert (resp.status, resp.text) == (200, "OK\n")
    assert target.shutdowns == 1


# --- paths, HTTP behaviour -------------------------------------------------------------

def test_unknown_path_is_404_with_help(run: Callable[..., Any]) -> None:
    async def main() -> list[Response]:
        async with serving(make_target()) as (_, port):
            return [await fetch(port, p) for p in ("/nope", "/ready/", "/help", "/")]
    nope, trailing, help_page, home = run(main())
    assert nope.status == 404 and trailing.status == 404
    assert_admin_headers(nope, "text/plain; charset=UTF-8")
    assert nope.text.startswith("invalid path. admin commands are:\n  /: Admin home page\n")
    assert "  /quitquitquit (POST): exit the server\n" in nope.text
    assert (help_page.status, help_page.text) == (200, nope.text.removeprefix("invalid path. "))
    assert home.status == 200 and home.headers["content-type"] == "text/html; charset=UTF-8"


def test_keep_alive_and_pipelining(run: Callable[..., Any]) -> None:
    async def main() -> tuple[bytes, bool, list[int]]:
        async with serving(make_target()) as (_, port):
            pipelined = await raw(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
                                        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                                        b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

            def reuse() -> list[int]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                statuses = []
                for path in ("/ready", "/stats?filter=x", "/server_info"):
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    resp.read()
                    statuses.append(resp.status)
                sock = conn.sock
                conn.close()
                assert sock is not None     # one socket served all three
                return statuses
            return (*pipelined, await asyncio.to_thread(reuse))
    out, closed, statuses = run(main())
    assert [int(s) for s in re.findall(rb"^HTTP/1.1 (\d+)", out, re.M)] == [200, 404, 200]
    assert closed                       # after the request that said Connection: close
    assert statuses == [200, 200, 200]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /ready HTTP/1.1\r\nHost: x\r\nFoo : bar\r\n\r\n", 400),
    (b"GET ready HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"POST /healthcheck/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET /ready HTTP/1.0\r\n\r\n", 426),
    (b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
], ids=["garbage", "content-length-and-chunked", "space-before-colon", "relative-target",
        "bad-chunk-size", "http-1.0", "header-block-over-60k"])
def test_malformed_request_gets_error_and_close(run: Callable[..., Any], request_bytes: bytes,
                                               status: int) -> None:
    target = make_target()

    async def main() -> tuple[bytes, bool, Response]:
        async with serving(target) as (_, port):
            out, closed = await raw(port, request_bytes)
            return out, closed, await fetch(port, "/ready")   # the server lives on
    out, closed, after = run(main())
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in head.lower()
    assert b"Traceback" not in out
    assert body == (b"Bad Request" if status == 400 else body)
    assert closed
    assert after.status == 200
    assert target.health_calls == []    # the bad-chunked POST never reached its handler


def test_handler_failure_is_500_without_traceback(run: Callable[..., Any]) -> None:
    target = make_target()
    target.state = "NOT_A_STATE"

    async def main() -> Response:
        async with serving(target) as (_, port):
            return await fetch(port, "/server_info")
    resp = run(main())
    assert resp.status == 500
    assert "Traceback" not in resp.text


def test_close_drops_idle_keep_alive_connections(run: Callable[..., Any]) -> None:
    async def main() -> bytes:
        server = await start_admin(make_target(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await reader.readuntil(b"LIVE\n")
        server.close()
        await server.wait_closed()        # returns although the client never hung up
        rest = await reader.read()
        writer.close()
        return first + rest
    assert run(main()).startswith(b"HTTP/1.1 200 OK\r\n")


def test_binds_ipv6_when_given_an_ipv6_host(run: Callable[..., Any]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def main() -> tuple[int, Response]:
        async with serving(make_target(), "::1") as (server, port):
            return server.sockets[0].family, await fetch(port, "/ready", host="::1")
    family, resp = run(main())
    assert family == socket.AF_INET6
    assert resp.status == 200
