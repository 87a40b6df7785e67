"""Bodies are streamed, never buffered whole: 10 MiB each way with the proxy's RSS bounded."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.client import status_of
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost
from tests.support.upstream import Received, Reply, Upstream

MIB = 1024 * 1024
BODY_SIZE = 10 * MIB
# The proxy may hold about one watermark (1 MiB) per direction plus allocator slack.
RSS_GROWTH_LIMIT_KIB = 8 * 1024


def handler(r: Received) -> Reply:
    if r.target == "/download-chunked":
        return Reply(200, chunks=[b"d" * 65536] * (BODY_SIZE // 65536))
    if r.target == "/download-length":
        return Reply(200, body=b"L" * BODY_SIZE)
    return Reply(200, body=str(len(r.body)).encode())


@pytest.fixture(scope="module")
def proxy():
    with Upstream(handler, read_delay=0.003) as up:
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "60s"}}]
        config = bootstrap([http_listener("web", [vhost(routes)])], [static_cluster("up", up.port)])
        with ProxyProcess(config) as p:
            yield p


class RssSampler:
    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.peak = proxy.rss_kib()
        self.baseline = self.peak
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proxy.rss_kib())
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@pytest.mark.parametrize("path", ["/download-chunked", "/download-length"])
def test_slow_reader_download_keeps_rss_bounded(proxy, path):
    with RssSampler(proxy) as rss, socket.create_connection(
            ("127.0.0.1", proxy.ports["web"]), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        received = 0
        head = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            if not head:
                head = chunk[:200]
            received += len(chunk)
            time.sleep(0.001)        # a slow reader: the proxy must pause its upstream
    assert status_of(head) == 200
    assert received > BODY_SIZE
    assert rss.growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew {rss.growth} KiB"


@pytest.mark.parametrize("chunked", [False, True])
def test_upload_to_slow_upstream_keeps_rss_bounded(proxy, chunked):
    piece = b"u" * 65536
    with RssSampler(proxy) as rss, socket.create_connection(
            ("127.0.0.1", proxy.ports["web"]), timeout=60) as s:
        if chunked:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n")
            for _ in range(BODY_SIZE // len(piece)):
                s.sendall(b"10000\r\n" + piece + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        else:
            s.sendall(f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY_SIZE}\r\n"
                      "Connection: close\r\n\r\n".encode())
            for _ in range(BODY_SIZE // len(piece)):
                s.sendall(piece)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert status_of(data) == 200
    assert data.endswith(str(BODY_SIZE).encode())
    assert rss.growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew {rss.growth} KiB"
