"""sidecar.http.h2_headers against h2's own processing of a received header block.

Each case goes through h2's H2Stream._process_received_headers (the reference) and
through the compiled pass: the same list (field types included) or the same
ProtocolError message, for requests, responses and trailers, with and without a
header encoding.  Then the pass is checked in place, over real sockets.
"""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.stream
import pytest
from h2.utilities import HeaderValidationFlags
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from sidecar.codec.http2 import H2Connection
from sidecar.codec.http2_events import RequestReceived
from sidecar.http.h2_headers import process_received_headers
from tests.http2.client import H2Client
from tests.http2.conftest import KINDS
from tests.support.proxy import ProxyProcess, bootstrap, http_listener, static_cluster, vhost
from tests.support.upstream import Received, Reply, Upstream

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
           (b":authority", b"example.com")]
RESPONSE = [(b":status", b"200")]


def reference(headers: list, flags: HeaderValidationFlags, encoding: str | None,
              normalize: bool = True, validate: bool = True) -> object:
    config = h2.config.H2Configuration(client_side=flags.is_client, header_encoding=encoding,
                                       normalize_inbound_headers=normalize,
                                       validate_inbound_headers=validate)
    stream = h2.stream.H2Stream(1, config, 65535, 65535)
    try:
        return stream._process_received_headers(list(headers), flags, encoding)
    except h2.exceptions.ProtocolError as e:
        return ("ProtocolError", str(e))


def compiled(headers: list, flags: HeaderValidationFlags, encoding: str | None,
             normalize: bool = True, validate: bool = True) -> object:
    try:
        return process_received_headers(list(headers), flags.is_trailer, flags.is_response_header,
                                        normalize, validate, encoding)
    except h2.exceptions.ProtocolError as e:
        return ("ProtocolError", str(e))


def same(headers: list, flags: HeaderValidationFlags, encoding: str | None = None, **kw: bool) -> object:
    block = [HeaderTuple(n, v) if i % 3 else NeverIndexedHeaderTuple(n, v)
             for i, (n, v) in enumerate(headers)]
    expected = reference(block, flags, encoding, **kw)
    got = compiled(block, flags, encoding, **kw)
    assert got == expected
    if isinstance(expected, list):
        assert [type(h) for h in got] == [type(h) for h in expected]   # type: ignore[union-attr]
    return got


AS_REQUEST = HeaderValidationFlags(False, False, False, False)
AS_RESPONSE = HeaderValidationFlags(True, False, True, False)
AS_TRAILER = HeaderValidationFlags(False, True, False, False)

CASES = {
    "valid request": REQUEST + [(b"user-agent", b"x"), (b"te", b"trailers")],
    "cookies joined last": REQUEST + [(b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2")],
    "uppercase name": REQUEST + [(b"X-A", b"1")],
    "space in name": REQUEST + [(b"x a", b"1")],
    "non-ascii name": REQUEST + [(b"x\xe9", b"1")],
    "colon inside name": REQUEST + [(b"x:a", b"1")],
    "NUL in value": REQUEST + [(b"x-a", b"a\x00b")],
    "CR in value": REQUEST + [(b"x-a", b"a\rb")],
    "LF in value": REQUEST + [(b"x-a", b"a\nb")],
    "leading space": REQUEST + [(b"x-a", b" a")],
    "trailing tab": REQUEST + [(b"x-a", b"a\t")],
    "empty name": REQUEST + [(b"", b"1")],
    "te gzip": REQUEST + [(b"te", b"gzip")],
    "te TRAILERS": REQUEST + [(b"te", b"TRAILERS")],
    "connection header": REQUEST + [(b"connection", b"close")],
    "keep-alive header": REQUEST + [(b"keep-alive", b"5")],
    "duplicate pseudo": REQUEST + [(b":path", b"/x")],
    "pseudo after regular": [(b":method", b"GET"), (b"x-a", b"1"), (b":path", b"/"),
                             (b":scheme", b"http"), (b":authority", b"a")],
    "custom pseudo": REQUEST + [(b":foo", b"1")],
    "no method": REQUEST[1:],
    "no scheme": [REQUEST[0]] + REQUEST[2:],
    "no path": REQUEST[:2] + REQUEST[3:],
    "empty path": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""),
                   (b":authority", b"a")],
    "status in request": REQUEST + [(b":status", b"200")],
    "protocol without CONNECT": REQUEST + [(b":protocol", b"websocket")],
    "ordinary CONNECT": [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    "CONNECT with path": [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    "extended CONNECT": [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                         (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
    "no authority nor host": REQUEST[:3],
    "host only": REQUEST[:3] + [(b"host", b"a")],
    "host matches": REQUEST + [(b"host", b"example.com")],
    "host mismatch": REQUEST + [(b"host", b"other")],
    "two hosts": REQUEST[:3] + [(b"host", b"a"), (b"host", b"a")],
    "two errors, first wins": REQUEST + [(b"connection", b"x"), (b"X-B", b"1")],
    "response": RESPONSE + [(b"content-type", b"text/plain"), (b"cookie", b"a")],
    "response without status": [(b"x-a", b"1")],
    "response with path": RESPONSE + [(b":path", b"/")],
    "trailer": [(b"grpc-status", b"0")],
    "pseudo in trailer": [(b":status", b"200")],
}


@pytest.mark.parametrize("headers", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("flags", [AS_REQUEST, AS_RESPONSE, AS_TRAILER],
                         ids=["request", "response", "trailer"])
@pytest.mark.parametrize("encoding", [None, "latin-1"])
def test_same_as_h2(headers: list, flags: HeaderValidationFlags, encoding: str | None) -> None:
    same(headers, flags, encoding)


def test_the_cases_cover_both_outcomes() -> None:
    outcomes = [same(h, AS_REQUEST) for h in CASES.values()]
    errors = {o[1] for o in outcomes if isinstance(o, tuple)}
    assert len(errors) >= 20, errors            # distinct messages, each h2's
    assert sum(isinstance(o, list) for o in outcomes) >= 5


@pytest.mark.parametrize("normalize, validate", [(False, True), (True, False), (False, False)])
def test_config_switches(normalize: bool, validate: bool) -> None:
    for headers in CASES.values():
        same(headers, AS_REQUEST, normalize=normalize, validate=validate)


def test_random_blocks() -> None:
    rnd = random.Random(5)
    names = [b":method", b":path", b":scheme", b":authority", b":status", b"host", b"cookie",
             b"te", b"x-a", b"connection", b"X-Up", b"", b"a b"]
    values = [b"GET", b"CONNECT", b"/", b"", b"trailers", b"a", b" a", b"a\x00", b"example.com"]
    for _ in range(3000):
        headers = [(rnd.choice(names), rnd.choice(values)) for _ in range(rnd.randint(0, 7))]
        if rnd.random() < 0.5:
            headers = REQUEST + headers
        same(headers, rnd.choice([AS_REQUEST, AS_RESPONSE, AS_TRAILER]),
             rnd.choice([None, "latin-1"]))


def test_our_connection_joins_cookies() -> None:
    server = H2Connection(False)
    server.initiate_connection()
    client = h2.connection.H2Connection()
    client.initiate_connection()
    client.send_headers(1, REQUEST + [(b"cookie", b"a"), (b"cookie", b"b")], end_stream=True)
    events = server.receive_data(client.data_to_send())
    request = [e for e in events if isinstance(e, RequestReceived)][0]
    assert request.headers[-1] == (b"cookie", b"a; b")


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    def cookies(r: Received) -> Reply:
        return Reply(200, [("content-type", "text/plain")], "|".join(r.header_values("cookie")).encode())

    with Upstream(cookies) as up:
        routes = [vhost([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])]
        with ProxyProcess(bootstrap([http_listener("h2", routes, codec_type="HTTP2")],
                                    [static_cluster("up", up.port)]), kind=request.param) as p:
            yield p


def test_split_cookies_reach_the_upstream_joined(proxy) -> None:
    """RFC 9113 8.2.3: the cookie fields of an HTTP/2 request are one cookie header upstream."""
    with H2Client(proxy.ports["h2"]) as c:
        result = c.get("/", headers=[("cookie", "a=1"), ("x-a", "1"), ("cookie", "b=2")])
    assert result.status == 200
    assert bytes(result.body) == b"a=1; b=2"


# --- outbound: what h2's _build_headers_frames hands the HPACK encoder ---------------------------

def reference_outbound(headers: list, flags: HeaderValidationFlags, normalize: bool, split: bool,
                       validate: bool) -> object:
    from h2.utilities import normalize_outbound_headers, validate_outbound_headers

    out = iter(headers)
    if normalize:
        out = normalize_outbound_headers(out, flags, split)
    if validate:
        out = validate_outbound_headers(out, flags)
    try:
        return list(out)
    except h2.exceptions.ProtocolError as e:
        return ("ProtocolError", str(e))
    except IndexError:
        return ("IndexError",)


def compiled_outbound(headers: list, flags: HeaderValidationFlags, normalize: bool, split: bool,
                      validate: bool) -> object:
    from sidecar.http.h2_headers import process_outbound_headers

    try:
        return process_outbound_headers(list(headers), flags.is_trailer, flags.is_response_header,
                                        normalize, split, validate)
    except h2.exceptions.ProtocolError as e:
        return ("ProtocolError", str(e))
    except IndexError:
        return ("IndexError",)


OUTBOUND = {
    **CASES,
    "mixed case and spaces": REQUEST + [(b" X-A ", b" v "), (b"Connection", b"close")],
    "credentials": REQUEST + [(b"authorization", b"basic x"), (b"proxy-authorization", b"y"),
                              (b"cookie", b"short=1"), (b"cookie", b"a-much-longer-cookie=value")],
    "cookie to split": REQUEST + [(b"cookie", b"a=1; b=2; c=a-much-longer-value-here")],
    "empty name": REQUEST + [(b"", b"x")],
    "blank name": REQUEST + [(b"  ", b"x")],
}


@pytest.mark.parametrize("headers", OUTBOUND.values(), ids=OUTBOUND.keys())
@pytest.mark.parametrize("flags", [AS_REQUEST, AS_RESPONSE, AS_TRAILER],
                         ids=["request", "response", "trailer"])
@pytest.mark.parametrize("normalize, split, validate", [
    (True, False, True), (True, True, True), (False, False, True), (True, False, False)])
def test_outbound_same_as_h2(headers: list, flags: HeaderValidationFlags, normalize: bool,
                             split: bool, validate: bool) -> None:
    for typed in (False, True):
        block = [HeaderTuple(n, v) if typed and i % 2 else (n, v) for i, (n, v) in enumerate(headers)]
        expected = reference_outbound(block, flags, normalize, split, validate)
        got = compiled_outbound(block, flags, normalize, split, validate)
        assert got == expected
        if isinstance(expected, list):
            assert [type(h) for h in got] == [type(h) for h in expected]   # type: ignore[union-attr]


@pytest.mark.parametrize("frame_size", [16384, 16])
def test_sent_header_blocks_are_byte_for_byte_h2s(frame_size: int) -> None:
    """A client on our H2Connection writes exactly what h2's own writes: requests, CONTINUATION
    splitting, trailers and the errors h2 raises for a bad block."""
    theirs = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    ours = H2Connection(True, "latin-1")
    for conn in (theirs, ours):
        conn.initiate_connection()
        conn.max_outbound_frame_size = frame_size
        conn.data_to_send()
    blocks = [[(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a"),
               ("Content-Type", "application/grpc"), ("te", "trailers"), ("cookie", "k=v"),
               ("authorization", "secret"), ("x-long", "v" * 40)]] * 3
    for sid, block in zip((1, 3, 5), blocks):
        theirs.send_headers(sid, block)
        ours.send_headers(sid, block)
        theirs.send_data(sid, b"body")
        ours.send_data(sid, b"body")
        theirs.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        ours.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        assert ours.data_to_send() == theirs.data_to_send()
    for bad in ([(":method", "GET"), (":path", "/"), (":authority", "a")],          # no :scheme
                [(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "a")]):
        errors = []
        for conn in (theirs, ours):
            with pytest.raises(h2.exceptions.ProtocolError) as caught:
                conn.send_headers(conn.get_next_available_stream_id(), bad)
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
