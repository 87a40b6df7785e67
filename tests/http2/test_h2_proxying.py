"""Downstream HTTP/2 (h2c) to HTTP/1.1 upstreams, side by side with Envoy on the same config:
requests and bodies, many streams on one connection, resets, AUTO codec detection."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import h2.connection
import h2.events
import pytest

from tests.http2.client import PREFACE, SETTINGS, H2Client, RawClient, frame
from tests.http2.conftest import KINDS, MIB, HangingUpstream, StatsDelta, scripted
from tests.support.client import request
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost
from tests.support.upstream import Upstream

ROUTES = [vhost([{"match": {"prefix": "/hang"}, "route": {"cluster": "hang"}},
                 {"match": {"prefix": "/"}, "route": {"cluster": "up"}}])]


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    hang = HangingUpstream()
    with Upstream(scripted) as up:
        listeners = [http_listener("h2", ROUTES, codec_type="HTTP2"),
                     http_listener("auto", ROUTES, codec_type="AUTO")]
        clusters = [static_cluster("up", up.port), static_cluster("hang", hang.port)]
        with ProxyProcess(bootstrap(listeners, clusters), kind=request.param) as p:
            p.upstream = up
            p.hang = hang
            yield p
    hang.close()


def test_get_and_post(proxy):
    with H2Client(proxy.ports["h2"]) as c:
        r = c.get("/hello?x=1")
        assert r.status == 200
        assert r.body == b"GET /hello?x=1"
        assert r.header("server") == "envoy" and r.header("date")
        assert r.header("content-length") == str(len(r.body))
        r = c.wait(c.request("/len", "POST", body=b"a" * 100_000))
        assert (r.status, r.body, r.header("x-method")) == (200, b"100000", "POST")
        seen = proxy.upstream.requests[-1]
        # No content-length from the client: an HTTP/1 upstream gets it chunked, as Envoy.
        assert seen.header("transfer-encoding") == "chunked"
        assert seen.header("host") == "example.com"
        sid = c.request("/len", "PUT", headers=[("content-length", "5")], end=False)
        c.send_body(sid, b"hello", end=True)
        assert c.wait(sid).body == b"5"
        assert proxy.upstream.requests[-1].header("content-length") == "5"


def test_cookies_are_joined_for_http1(proxy):
    with H2Client(proxy.ports["h2"]) as c:
        assert c.get("/c", headers=[("cookie", "a=1"), ("cookie", "b=2")]).status == 200
    assert proxy.upstream.requests[-1].header_values("cookie") == ["a=1; b=2"]


def test_many_concurrent_streams_on_one_connection(proxy):
    with H2Client(proxy.ports["h2"]) as c:
        sids = [c.request(f"/s/{i}") for i in range(100)]
        for i, sid in enumerate(sids):
            r = c.wait(sid)
            assert (r.status, r.body) == (200, f"GET /s/{i}".encode())


def test_large_bodies_both_ways(proxy):
    with H2Client(proxy.ports["h2"], timeout=20) as c:
        r = c.wait(c.request("/size?n=%d" % (8 * MIB)), timeout=30)
        assert r.status == 200 and len(r.body) == 8 * MIB
        sid = c.request("/len", "POST", end=False)
        c.send_body(sid, b"z" * (8 * MIB), end=True, deadline=30)
        r = c.wait(sid, timeout=30)
        assert (r.status, r.body) == (200, str(8 * MIB).encode())


def test_client_reset_aborts_the_upstream_request(proxy):
    hang = proxy.hang
    hang.heads.clear()
    hang.closed.clear()
    delta = StatsDelta(proxy)
    with H2Client(proxy.ports["h2"]) as c:
        sid = c.request("/hang")
        assert hang.heads.wait(5), "the request never reached the upstream"
        c.reset(sid)
        assert hang.closed.wait(5), "the upstream request was not aborted"
        assert c.get("/after").status == 200          # the connection carries on
    d = delta()
    assert d["http2.rx_reset"] == 1
    assert d["http.h2.downstream_rq_rx_reset"] == 1


def test_client_reset_while_a_pooled_upstream_answers(proxy):
    """A warm pooled connection takes the router's callback path (no task): a client reset
    while the upstream takes its time drops that upstream connection, and the request is
    counted as sent, as on the coroutine path and in Envoy."""
    with H2Client(proxy.ports["h2"]) as c:
        assert c.get("/warm").status == 200
        delta = StatsDelta(proxy)
        sid = c.request("/delay?s=2")
        time.sleep(0.3)
        c.reset(sid)
        time.sleep(0.3)
        assert c.get("/after").status == 200
        assert c.streams[sid].status == 0
    d = delta()
    assert d["cluster.up.upstream_rq_total"] == 2
    assert d["cluster.up.upstream_cx_destroy"] == 1
    assert d["http.h2.downstream_rq_rx_reset"] == 1


def test_client_reset_mid_response_body(proxy):
    delta = StatsDelta(proxy)
    with H2Client(proxy.ports["h2"], timeout=10) as c:
        sid = c.request(f"/size?n={64 * MIB}")
        while len(c.streams[sid].body) < MIB:
            c.read_some()
        c.reset(sid)
        for i in range(3):
            assert c.get(f"/after/{i}").status == 200
    with H2Client(proxy.ports["h2"]) as c:
        assert c.get("/fresh").status == 200
    d = delta()
    assert d["http2.rx_reset"] == 1
    # The reset one too: its response headers had gone out (as Envoy counts).
    assert d["http.h2.downstream_rq_2xx"] == 5


def test_client_goaway_lets_open_streams_finish(proxy):
    with H2Client(proxy.ports["h2"]) as c:
        sid = c.request("/delay?s=0.3")
        c.conn.close_connection()
        c.flush()
        # h2 (the client) closed its own state machine: read the frames raw.
        c.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        r = c.wait(sid)
        assert (r.status, r.body, r.ended) == (200, b"late", True)


def test_auto_tells_http1_from_http2_on_one_port(proxy):
    delta = StatsDelta(proxy)
    port = proxy.ports["auto"]
    r1 = request(port, "/one")
    assert (r1.status, r1.body) == (200, b"GET /one")
    with H2Client(port) as c:
        r2 = c.get("/two")
        assert (r2.status, r2.body) == (200, b"GET /two")
    d = delta(0.5)
    assert d["http.auto.downstream_cx_http1_total"] == 1
    assert d["http.auto.downstream_cx_http2_total"] == 1
    assert d["http.auto.downstream_rq_http1_total"] == 1
    assert d["http.auto.downstream_rq_http2_total"] == 1
    # Both connections ended through the listener's accounting too.
    listener = f"listener.127.0.0.1_{port}."
    assert d[listener + "downstream_cx_total"] == 2
    assert d[listener + "downstream_cx_destroy"] == 2
    assert delta.base[listener + "downstream_cx_active"] == 0
    assert delta.base["http.auto.downstream_cx_active"] == 0


def test_http2_codec_refuses_http1_silently(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.ports["h2"]), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert s.recv(1000) == b""
    s.close()


def test_request_trailers_are_counted(proxy):
    delta = StatsDelta(proxy)
    with H2Client(proxy.ports["h2"]) as c:
        sid = c.request("/len", "POST", headers=[("te", "trailers")], end=False)
        c.send_body(sid, b"abc")
        c.conn.send_headers(sid, [("x-trailer", "1")], end_stream=True)
        c.flush()
        assert c.wait(sid).body == b"3"
    assert delta()["http2.trailers"] == 1


def test_stats_names(proxy):
    with H2Client(proxy.ports["h2"]) as c:
        assert c.get("/stats").status == 200
    stats = proxy.stats()
    for name in ("http.h2.downstream_cx_http2_total", "http.h2.downstream_cx_http2_active",
                 "http.h2.downstream_rq_http2_total", "http2.rx_reset", "http2.tx_reset",
                 "http2.header_overflow", "http2.header_list_size_too_large",
                 "http2.outbound_flood", "http2.outbound_control_flood",
                 "http2.inbound_empty_frames_flood", "http2.inbound_priority_frames_flood",
                 "http2.inbound_window_update_frames_flood", "http2.rx_messaging_error",
                 "http2.trailers", "http2.streams_active",
                 "http.h2.downstream_rq_too_many_premature_resets"):
        assert name in stats, name
    assert stats["http.h2.downstream_cx_http2_active"] >= 0


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")
def test_h2load(proxy):
    out = subprocess.run(["h2load", "-c2", "-m10", "-n200", f"http://127.0.0.1:{proxy.ports['h2']}/load"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "200 succeeded" in out, out
    assert "status codes: 200 2xx" in out, out


@pytest.mark.parametrize("kind", KINDS)
def test_access_log_of_http2_requests(kind, tmp_path):
    log_path = tmp_path / "access.log"
    log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log_path),
        "log_format": {"text_format": "%PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% "
                                      "%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT%\n"}}}]
    with Upstream(scripted) as up:
        config = bootstrap([http_listener("h2", ROUTES, codec_type="HTTP2", access_log=log)],
                           [static_cluster("up", up.port), static_cluster("hang", up.port)])
        with ProxyProcess(config, kind=kind, extra_args=["--file-flush-interval-msec", "50"]) as p:
            with H2Client(p.ports["h2"]) as c:
                assert c.get("/logged").status == 200
                assert c.wait(c.request("/len", "POST", body=b"12345")).body == b"5"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and log_path.exists() \
                    and len(log_path.read_text().splitlines()) < 2:
                time.sleep(0.05)
            assert log_path.read_text().splitlines() == [
                "HTTP/2 GET /logged example.com 200 0 11",
                "HTTP/2 POST /len example.com 200 5 1"]


def test_auto_decides_on_the_first_read(proxy):
    """As Envoy: a first read shorter than "PRI * HTTP/2" makes the connection HTTP/1."""
    port = proxy.ports["auto"]
    with RawClient(port, preface=False) as c:
        c.send(PREFACE[:3])
        time.sleep(0.2)
        c.send(PREFACE[3:] + frame(SETTINGS, 0, 0))
        c.request(1, "/split")
        c.read(3)
        assert c.closed and not c.statuses()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    for piece in (b"P", b"UT /x HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n"):
        s.sendall(piece)
        time.sleep(0.05)
    assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
    s.close()


def test_expect_100_continue_is_answered_by_the_proxy(proxy):
    with H2Client(proxy.ports["h2"]) as c:
        sid = c.request("/len", "POST", headers=[("expect", "100-continue")], end=False)
        informational = []
        while not informational:
            informational = [e for e in c.read_some()
                             if isinstance(e, h2.events.InformationalResponseReceived)]
        assert dict(informational[0].headers)[":status"] == "100"
        c.send_body(sid, b"abc", end=True)
        assert c.wait(sid).body == b"3"
    assert proxy.upstream.requests[-1].header("expect") is None
