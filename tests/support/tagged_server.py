"""A TCP server that says who it is, then echoes: shows which cluster a connection reached and
that the bytes arrived unchanged (listener filters read them first)."""

from __future__ import annotations

import socket

from tests.support.tcp_server import ThreadedTcpServer


class TaggedServer(ThreadedTcpServer):
    """Sends ``<tag>\\n`` on accept, then echoes everything until EOF; ``peers`` lists clients."""

    def __init__(self, tag: str, host: str = "127.0.0.1") -> None:
        self.tag = tag
        self.peers: list[tuple[str, int]] = []
        super().__init__(host=host)

    def serve(self, conn: socket.socket) -> None:
        self.peers.append(conn.getpeername()[:2])
        conn.sendall(self.tag.encode() + b"\n")
        while data := conn.recv(65536):
            conn.sendall(data)


def exchange(host: str, port: int, payload: bytes, source: str | None = None,
             timeout: float = 3.0) -> tuple[str, bytes]:
    """(tag, echoed bytes) through the proxy; ("", b"") when the proxy closed the connection.

    Reads the tag line and the echo of ``payload``, then closes (no half-close first: Envoy
    closes a connection whose FIN arrives while its listener filters still inspect it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
        if payload:
            s.sendall(payload)
        data = b""
        try:
            while True:
                tag, nl, rest = data.partition(b"\n")
                if nl and len(rest) >= len(payload):
                    break
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    tag, nl, rest = data.partition(b"\n")
    return (tag.decode(), rest) if nl else ("", b"")
