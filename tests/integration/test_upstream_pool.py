"""The upstream HTTP/1.1 pool: reuse, idle timeout, max requests, and the keep-alive close race."""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from tests.support.tcp_server import ThreadedTcpServer
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class RacyUpstream(ThreadedTcpServer):
    """Answers the first request on each connection; on the second it closes without answering.

    That is what a client sees when an upstream's keep-alive timeout closes a
    pooled connection just as a new request is written to it.
    """

    def __init__(self) -> None:
        self.answered = 0
        self.closes_seen = 0
        super().__init__()

    @property
    def connections(self) -> int:
        return self.accepted

    def serve(self, conn: socket.socket) -> None:
        served = 0
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                self.closes_seen += 1
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                if served == 1:
                    return            # close without a byte of response
                served += 1
                self.answered += 1     # before sending: the test may look right after
                conn.sendall(RESPONSE)


@pytest.fixture
def racy():
    up = RacyUpstream()
    yield up
    up.close()


def make_proxy(port: int, **cluster_extra) -> ProxyProcess:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    config = bootstrap([http_listener("web", [vhost(routes)])],
                       [static_cluster("up", port, **cluster_extra)])
    return ProxyProcess(config)


def get_many(port: int, n: int, method: str = "GET", body: bytes | None = None) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    statuses = []
    for i in range(n):
        conn.request(method, f"/r/{i}", body=body, headers={"Host": "a"})
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()
    return statuses


def test_reused_connection_closed_by_upstream_is_retried_once_on_a_fresh_one(racy):
    with make_proxy(racy.port) as proxy:
        statuses = get_many(proxy.ports["web"], 4)
        assert statuses == [200, 200, 200, 200]
        # each request after the first met a dead pooled connection and was resent
        assert racy.connections == 4
        assert racy.answered == 4
        stats = proxy.stats()
        assert stats["cluster.up.upstream_rq_200"] == 4


def test_requests_with_small_bodies_are_retried_too(racy):
    with make_proxy(racy.port) as proxy:
        assert get_many(proxy.ports["web"], 3, "POST", b"payload") == [200, 200, 200]


def test_upstream_idle_timeout_closes_pooled_connections(racy):
    with make_proxy(racy.port, common_http_protocol_options={"idle_timeout": "0.2s"}) as proxy:
        assert get_many(proxy.ports["web"], 1) == [200]
        deadline = time.monotonic() + 5
        while racy.closes_seen < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert racy.closes_seen == 1             # the proxy closed the idle connection
        assert proxy.stats()["cluster.up.upstream_cx_idle_timeout"] == 1


def test_max_requests_per_connection(racy):
    with make_proxy(racy.port, max_requests_per_connection=1) as proxy:
        assert get_many(proxy.ports["web"], 3) == [200, 200, 200]
        assert racy.connections == 3 and racy.answered == 3   # never reused, so never raced
