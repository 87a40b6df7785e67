"""SIGTERM drains: in-flight requests finish, new connections are refused, the process exits
within --drain-time-s; /quitquitquit does the same."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from tests.support.client import request
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost
from tests.support.upstream import Received, Reply, Upstream


def slow(r: Received) -> Reply:
    return Reply(200, body=b"finished", delay=1.0 if r.target == "/slow" else 0.0)


def config(port: int) -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    return bootstrap([http_listener("web", [vhost(routes)])], [static_cluster("up", port)])


@pytest.mark.parametrize("how", ["sigterm", "quitquitquit"])
def test_in_flight_request_finishes_and_new_connections_are_refused(how):
    with Upstream(slow) as up, ProxyProcess(config(up.port),
                                            extra_args=["--drain-time-s", "5"]) as proxy:
        port = proxy.ports["web"]
        results = []
        t = threading.Thread(target=lambda: results.append(request(port, "/slow")))
        t.start()
        time.sleep(0.3)                      # the request is now waiting on the upstream
        start = time.monotonic()
        if how == "sigterm":
            proxy.proc.send_signal(signal.SIGTERM)
        else:
            assert proxy.admin("/quitquitquit", method="POST") == (200, "OK\n")
        time.sleep(0.2)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        t.join(10)
        assert results and results[0].status == 200 and results[0].body == b"finished"
        assert results[0].header("connection") == "close"     # draining: no keep-alive
        assert proxy.proc.wait(10) == 0
        assert time.monotonic() - start < 5


def test_idle_keep_alive_connections_do_not_hold_up_shutdown():
    with Upstream(slow) as up, ProxyProcess(config(up.port)) as proxy:
        idle = socket.create_connection(("127.0.0.1", proxy.ports["web"]))
        idle.sendall(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        while b"finished" not in got:
            chunk = idle.recv(4096)
            assert chunk, got
            got += chunk
        start = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(10) == 0
        assert time.monotonic() - start < 3           # drain time is 600 s by default
        assert idle.recv(4096) == b""                 # closed by the proxy
        idle.close()
