"""Raw-socket upstreams that count every byte they read and write, and close at precise moments.

For the cluster's connection counters (upstream_cx_rx/tx_bytes_total, upstream_cx_destroy*):
what the proxy counts must equal what crossed the socket (``received``, ``sent``), and each
script closes the connection exactly where a case needs it.  The request path picks the
script:

- ``/ok``: a 2-byte answer, the connection kept alive.
- ``/ok-then-close``: the same, then the upstream closes the idle connection.
- ``/partial``: a head announcing 10 bytes, 2 of them, then the upstream closes.
- ``/none``: the upstream closes without answering.
- ``/hang``: never answers (until the proxy closes).
- ``/upgrade`` (HTTP/1): a 101, then an echoing tunnel; ``/upgrade-then-close``: a 101,
  then the upstream closes.
- ``/head-only`` (HTTP/1): a head and 2 of 10 body bytes, then nothing more.
- ``/goaway`` (HTTP/2): the answer, then GOAWAY (the connection left open).
"""

from __future__ import annotations

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.support.tcp_server import ThreadedTcpServer

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
PARTIAL = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"


class _Counting(ThreadedTcpServer):
    def __init__(self) -> None:
        self.received = self.sent = 0
        self.lock = threading.Lock()
        super().__init__()

    def recv(self, conn: socket.socket) -> bytes:
        data = conn.recv(65536)
        with self.lock:
            self.received += len(data)
        return data

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.lock:
            self.sent += len(data)

    def drain(self, conn: socket.socket) -> None:
        """Read (and count) until the proxy closes."""
        while self.recv(conn):
            pass


class CountingHttp1Upstream(_Counting):
    def serve(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = self.recv(conn)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            fields = dict((k.strip().lower(), v.strip())
                          for k, _, v in (line.partition(":") for line in lines[1:]))
            if "content-length" in fields:
                length = int(fields["content-length"])
                while len(buf) < length:
                    data = self.recv(conn)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
            elif fields.get("transfer-encoding") == "chunked":
                while not buf.endswith(b"0\r\n\r\n"):
                    data = self.recv(conn)
                    if not data:
                        return
                    buf += data
                buf = b""
            if path == "/ok":
                self.send(conn, OK)
            elif path == "/ok-then-close":
                self.send(conn, OK)
                time.sleep(0.3)         # the proxy has pooled it by now
                return
            elif path == "/partial":
                self.send(conn, PARTIAL)
                time.sleep(0.2)
                return
            elif path == "/none":
                return
            elif path in ("/upgrade", "/upgrade-then-close"):
                self.send(conn, SWITCHED)
                if path == "/upgrade":
                    while data := self.recv(conn):
                        self.send(conn, data)       # a tunnel echoing until the proxy closes
                else:
                    conn.settimeout(0.3)            # read what comes for a while, then close
                    try:
                        self.drain(conn)
                    except TimeoutError:
                        pass
                return
            elif path == "/head-only":
                self.send(conn, PARTIAL)
                self.drain(conn)
                return
            else:                       # /hang
                self.drain(conn)
                return


class CountingHttp2Upstream(_Counting):
    def serve(self, conn: socket.socket) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))
        h2c.initiate_connection()
        self.send(conn, h2c.data_to_send())
        while True:
            data = self.recv(conn)
            if not data:
                return
            try:
                events = h2c.receive_data(data)
            except h2.exceptions.ProtocolError:     # e.g. frames after our GOAWAY
                self.drain(conn)
                return
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers)[":path"]
                    sid = event.stream_id
                    if path in ("/ok", "/ok-then-close", "/goaway"):
                        h2c.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                        h2c.send_data(sid, b"ok", end_stream=True)
                        if path == "/goaway":
                            h2c.close_connection(last_stream_id=sid)
                        self.send(conn, h2c.data_to_send())
                        if path == "/ok-then-close":
                            time.sleep(0.3)
                            return
                    elif path == "/partial":
                        h2c.send_headers(sid, [(":status", "200"), ("content-length", "10")])
                        h2c.send_data(sid, b"ab")
                        self.send(conn, h2c.data_to_send())
                        time.sleep(0.2)
                        return
                    elif path == "/none":
                        self.send(conn, h2c.data_to_send())
                        return
            out = h2c.data_to_send()
            if out:
                self.send(conn, out)
