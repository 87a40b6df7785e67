"""HTTP/2 flow control through the proxy, side by side with Envoy: a client that stops reading
and an upstream that reads slowly both stall the sender, never grow the proxy's memory."""

from __future__ import annotations

import socket
import time

import pytest

from tests.http2.client import H2Client
from tests.http2.conftest import KINDS, MIB, HangingUpstream, scripted
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost
from tests.support.upstream import Upstream

SMALL_WINDOWS = {"initial_stream_window_size": 65535, "initial_connection_window_size": 65535}


def config(up_port: int, stuck_port: int) -> dict:
    routes = [vhost([{"match": {"prefix": "/stuck"}, "route": {"cluster": "stuck", "timeout": "0s"}},
                     {"match": {"prefix": "/"}, "route": {"cluster": "up"}}])]
    listener = http_listener("h2", routes, codec_type="HTTP2", http2_protocol_options=SMALL_WINDOWS)
    listener["per_connection_buffer_limit_bytes"] = 256 * 1024
    return bootstrap([listener], [static_cluster("up", up_port), static_cluster("stuck", stuck_port)])


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    # The stuck upstream reads the request head and then nothing.
    stuck = HangingUpstream(read_body=False)
    with Upstream(scripted) as up:
        with ProxyProcess(config(up.port, stuck.port), kind=request.param) as p:
            yield p
    stuck.close()


def settle_rss(proxy) -> int:
    time.sleep(0.3)
    return proxy.rss_kib()


def test_stalled_reader_keeps_proxy_memory_bounded(proxy):
    size = 48 * MIB
    with H2Client(proxy.ports["h2"], timeout=20) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        before = settle_rss(proxy)
        c.auto_ack = False                    # read frames but never re-open the window
        sid = c.request(f"/size?n={size}")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(c.streams[sid].body) < 65535:
            c.read_some()
        time.sleep(1.5)                       # the upstream keeps trying to send meanwhile
        grown = settle_rss(proxy) - before
        assert len(c.streams[sid].body) <= 65535          # exactly the client's window
        assert grown < 24 * 1024, f"proxy RSS grew {grown} KiB with a stalled reader"
        # Reading again: the whole body arrives, nothing lost.
        got = len(c.streams[sid].body)
        c.conn.acknowledge_received_data(got, sid)
        c.auto_ack = True
        c.flush()
        r = c.wait(sid, timeout=60)
        assert r.status == 200 and r.ended and len(r.body) == size


def test_stuck_upstream_stalls_the_client_upload(proxy):
    with H2Client(proxy.ports["h2"], timeout=1.5) as c:
        before = settle_rss(proxy)
        sid = c.request("/stuck", "POST", end=False)
        sent = 0
        chunk = b"u" * 16384
        stalled = False
        while sent < 64 * MIB:
            try:
                c.send_body(sid, chunk, deadline=1.5)
            except TimeoutError:
                stalled = True                # no window for 1.5 s: the proxy holds back
                break
            sent += len(chunk)
        grown = settle_rss(proxy) - before
        assert stalled, f"sent {sent} bytes without being held back"
        # The socket buffers to the upstream, the proxy's buffer and the stream window.
        assert sent < 24 * MIB, sent
        assert grown < 24 * 1024, f"proxy RSS grew {grown} KiB"
