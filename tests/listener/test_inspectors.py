"""http_inspector and tls_inspector on bytes (filters/listener/), and the original_dst option
on a socket that was not redirected."""

from __future__ import annotations

import socket
import ssl

import pytest

from filters.listener import http_inspector, tls_inspector
from filters.listener.original_dst import original_dst


def client_hello(sni: str | None, alpn: list[str]) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("data,expected", [
    (b"GET / HTTP/1.1\r\n", (True, "http/1.1")),
    (b"POST /x?y=1 HTTP/1.0\r\nHost: a\r\n", (True, "http/1.0")),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (True, "h2c")),
    (b"PRI * HTTP/2", (False, "")),            # could still be the preface
    (b"GET /long/pa", (False, "")),            # could still be a request line
    (b"GET / HTTP/1.1", (False, "")),
    (b"hello world\n", (True, "")),
    (b"\x16\x03\x01", (True, "")),
    (b"GET / HTTP/3.0\r\n", (True, "")),
])
def test_http_inspector(data, expected):
    assert http_inspector.inspect(data) == expected


def test_http_inspector_gives_up_at_eof():
    assert http_inspector.inspect(b"GET / HT", eof=True) == (True, "")


def test_tls_inspector_reads_sni_and_alpn_in_pieces():
    hello = client_hello("Svc.Example.com", ["h2", "http/1.1"])
    for cut in (1, 4, 5, 40, len(hello) - 1):
        assert tls_inspector.inspect(hello[:cut]) == (False, None)
    done, parsed = tls_inspector.inspect(hello)
    assert done and parsed is not None
    assert (parsed.server_name, parsed.alpn) == ("svc.example.com", ("h2", "http/1.1"))


def test_tls_inspector_without_sni_or_alpn_and_not_tls():
    done, parsed = tls_inspector.inspect(client_hello(None, []))
    assert done and parsed is not None and (parsed.server_name, parsed.alpn) == ("", ())
    assert tls_inspector.inspect(b"GET / HTTP/1.1\r\n") == (True, None)
    assert tls_inspector.inspect(b"\x16\x03") == (False, None)
    assert tls_inspector.inspect(b"\x16\x03", eof=True) == (True, None)


def test_original_dst_of_a_socket_that_was_not_redirected():
    """Without a NAT entry the option fails (None) or reports the socket's own address."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            conn, _ = server.accept()
            with conn:
                assert original_dst(conn) in (None, conn.getsockname())


def big_hello(body_size: int) -> bytes:
    """A well-formed ClientHello of ``body_size`` bytes (a padding extension), in 16000-byte
    records."""
    pad = body_size - 47
    extensions = (21).to_bytes(2, "big") + pad.to_bytes(2, "big") + bytes(pad)
    hello = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
             + len(extensions).to_bytes(2, "big") + extensions)
    body = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p
                    for p in (body[i:i + 16000] for i in range(0, len(body), 16000)))


def test_tls_inspector_limits_as_envoy():
    # the raw bytes pass 16 KiB before the hello is whole: Envoy gives up (too large)
    assert tls_inspector.inspect(big_hello(16384)) == (True, tls_inspector.TOO_LARGE)
    # a hello declaring more than 16 KiB: BoringSSL calls it no ClientHello at all
    assert tls_inspector.inspect(big_hello(16385)[:100]) == (True, None)
    done, hello = tls_inspector.inspect(big_hello(15000))
    assert done and hello is not None and hello is not tls_inspector.TOO_LARGE
