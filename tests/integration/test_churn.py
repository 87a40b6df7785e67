"""Connection churn: 20,000+ connections opened and closed through the HTTP and TCP listeners.

Half of them close cleanly (Connection: close / half-close), the rest are
reset abruptly.  The proxy must keep serving and leak no connection.  This
is also the regression test for uvloop's abort ("double free or corruption")
when a half-closed transport is closed under churn: tcp_proxy forwards every
FIN here.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.support.client import request
from tests.support.proxy import REPO, ProxyProcess, bootstrap, http_listener, static_cluster, tcp_listener, vhost

CONNECTIONS = 10_000        # per listener: 20,000 in all
CONCURRENCY = 64
LINGER_RESET = struct.pack("ii", 1, 0)


@pytest.fixture(scope="module")
def upstreams():
    procs = []
    ports = []
    for args in ([], ["--echo-tcp"]):
        proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "upstream.py"),
                                 "--port", "0", *args], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("listening"), line
        ports.append(int(line.rsplit(":", 1)[1]))
        procs.append(proc)
    yield ports
    for proc in procs:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(scope="module")
def proxy(upstreams):
    http_port, echo_port = upstreams
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "http"}}]
    config = bootstrap([http_listener("web", [vhost(routes)]), tcp_listener("tcp", "echo")],
                       [static_cluster("http", http_port), static_cluster("echo", echo_port)])
    with ProxyProcess(config) as p:
        yield p


async def churn(port: int, make_payload, total: int) -> tuple[int, int]:
    """Open ``total`` connections, ``CONCURRENCY`` at a time; every other one is reset abruptly."""
    ok = failed = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal ok, failed
        for i in counter:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(make_payload(i))
                if i % 2:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                    writer.transport.abort()
                    ok += 1
                    continue
                if writer.can_write_eof() and make_payload is tcp_payload:
                    writer.write_eof()
                data = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                if data:
                    ok += 1
                else:
                    failed += 1
            except (OSError, asyncio.TimeoutError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok, failed


def http_payload(i: int) -> bytes:
    return f"GET /churn/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()


def tcp_payload(i: int) -> bytes:
    return f"tcp churn {i}\n".encode()


def wait_no_active(proxy, names: list[str]) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while True:
        stats = proxy.stats()
        if all(stats.get(n, 0) == 0 for n in names) or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def test_http_churn(proxy):
    ok, failed = asyncio.run(churn(proxy.ports["web"], http_payload, CONNECTIONS))
    assert proxy.proc.poll() is None, proxy.output()
    assert failed == 0 and ok == CONNECTIONS
    stats = wait_no_active(proxy, ["http.web.downstream_cx_active", "http.web.downstream_rq_active"])
    assert stats["http.web.downstream_cx_active"] == 0
    assert stats["http.web.downstream_cx_total"] >= CONNECTIONS
    assert request(proxy.ports["web"], "/after").status == 200


def test_tcp_churn(proxy):
    ok, failed = asyncio.run(churn(proxy.ports["tcp"], tcp_payload, CONNECTIONS))
    assert proxy.proc.poll() is None, proxy.output()
    assert failed == 0 and ok == CONNECTIONS
    stats = wait_no_active(proxy, ["cluster.echo.upstream_cx_active"])
    assert stats["cluster.echo.upstream_cx_active"] == 0
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as s:
        s.sendall(b"after churn")
        assert s.recv(100) == b"after churn"
