"""Draining HTTP/2 connections (sidecar only: Envoy exits at once on SIGTERM, a documented
difference): GOAWAY NO_ERROR naming the last stream, in-flight streams finish, then close;
an idle HTTP/2 connection does not hold up shutdown; the idle timeout says GOAWAY too."""

from __future__ import annotations

import signal
import time

from tests.http2.client import GOAWAY, H2Client, RawClient
from tests.http2.conftest import scripted
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost
from tests.support.upstream import Upstream

ROUTES = [vhost([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])]


def config(port: int, **hcm) -> dict:
    return bootstrap([http_listener("h2", ROUTES, codec_type="HTTP2", **hcm)],
                     [static_cluster("up", port)])


def test_sigterm_sends_goaway_and_lets_streams_finish():
    with Upstream(scripted) as up, ProxyProcess(config(up.port),
                                                extra_args=["--drain-time-s", "5"]) as proxy:
        with H2Client(proxy.ports["h2"]) as c, H2Client(proxy.ports["h2"]) as idle:
            assert idle.get("/warm").status == 200
            sid = c.request("/delay?s=0.6")
            time.sleep(0.2)                        # the stream waits on the upstream
            proxy.proc.send_signal(signal.SIGTERM)
            r = c.wait(sid)
            assert (r.status, r.body, r.ended) == (200, b"late", True)
            assert c.goaway is not None and c.goaway.error_code == 0
            assert c.goaway.last_stream_id == sid
            c.wait_closed()
            idle.wait_closed()                     # idle: closed at once
            assert idle.goaway is not None and idle.goaway.error_code == 0
        assert proxy.proc.wait(10) == 0


def test_idle_timeout_closes_with_goaway():
    with Upstream(scripted) as up, ProxyProcess(config(
            up.port, common_http_protocol_options={"idle_timeout": "0.3s"})) as proxy:
        with RawClient(proxy.ports["h2"]) as c:
            c.request(1, "/x")
            c.read(3)
            assert c.closed
            assert c.statuses() == {1: 200}
            assert c.goaway()[1] == 0
            assert [f[0] for f in c.frames].count(GOAWAY) == 1
        assert proxy.stats()["http.h2.downstream_cx_idle_timeout"] == 1


def test_max_requests_per_connection_drains_the_connection():
    with Upstream(scripted) as up, ProxyProcess(config(
            up.port, common_http_protocol_options={"max_requests_per_connection": 2})) as proxy:
        with H2Client(proxy.ports["h2"]) as c:
            assert c.get("/1").status == 200
            assert c.get("/2").status == 200
            c.wait_closed()
            assert c.goaway is not None and c.goaway.error_code == 0
