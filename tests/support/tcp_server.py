"""A real TCP server for tests: accepts on 127.0.0.1 in a thread, one thread per connection."""

from __future__ import annotations

import socket
import threading


class ThreadedTcpServer:
    """Subclasses implement ``serve(conn)``; ``accepted`` counts connections."""

    def __init__(self, backlog: int = 128, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return          # closed
            self.accepted += 1
            threading.Thread(target=self._serve_and_close, args=(conn,), daemon=True).start()

    def _serve_and_close(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.serve(conn)
            except OSError:
                pass            # the proxy went away mid-test; the test asserts what matters

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
