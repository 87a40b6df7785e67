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



@pytest.mark.parametrize("mib", [4, 5])
def test_client_gone_after_the_body_came_leaves_the_reused_connection_alone(mib: int) -> None:
    """A response body that came whole from the upstream while its client was still reading
    returns the connection to the pool; if that client then goes away, the connection (now
    carrying another request) must not be aborted, or that request reaches the upstream
    twice (the resend after a closed pooled connection).  The body sizes are those for
    which, on loopback here, the body is all in the proxy (so the connection is reused)
    while the proxy is still waiting to write to the stalled client."""
    from tests.support.upstream import Received, Reply, Upstream

    big = b"x" * (mib * 1024 * 1024)

    def handler(r: Received) -> Reply:
        if r.target == "/big":
            return Reply(200, [("content-length", str(len(big)))], big)
        return Reply(200, body=b"slow", delay=1.0)

    with Upstream(handler) as up:
        config = bootstrap([http_listener("web", [vhost([{"match": {"prefix": "/"},
                                                           "route": {"cluster": "up"}}])])],
                           [static_cluster("up", up.port)])
        with ProxyProcess(config) as proxy:
            port = proxy.ports["web"]
            a = socket.socket()
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: small window
            a.connect(("127.0.0.1", port))
            a.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            a.recv(1024)                      # started, then A stops reading
            time.sleep(1.0)                   # the whole body left the upstream by now
            b = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            b.request("GET", "/slow")         # on the connection /big came back on
            time.sleep(0.3)
            a.close()                         # A goes away while B waits for its answer
            response = b.getresponse()
            assert (response.status, response.read()) == (200, b"slow")
            b.close()
    assert [r.target for r in up.requests].count("/slow") == 1
