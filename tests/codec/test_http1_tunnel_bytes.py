"""The bytes after a protocol switch: both HTTP/1 adapters hand them over, split anywhere.

An Upgrade request's head (or a 101 response's) ends HTTP/1 on that connection; what
follows it in the same read belongs to the tunnel (WebSocket frames) and must reach
the other side unchanged, neither parsed nor dropped.
"""

from __future__ import annotations

import pytest

from sidecar.codec.events import EndOfMessage, RequestHead, ResponseHead
from sidecar.codec.http1 import get_parsers

ADAPTERS = ("httptools", "h11")
REQUEST = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: x\r\n\r\n")
RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
FRAMES = b"\x81\x05hello\x82\x00GET / HTTP/1.1\r\n\r\n"   # incl. bytes that look like HTTP


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("split", range(len(REQUEST) - 3, len(REQUEST) + len(FRAMES), 3))
def test_upgrade_request_leaves_the_rest_to_the_tunnel(adapter: str, split: int) -> None:
    parser = get_parsers(adapter)[0]()
    data = REQUEST + FRAMES
    events = parser.feed(data[:split])
    if split < len(REQUEST):                 # the head was not complete yet
        assert events == [] and parser.take_tunnel_bytes() == b""
        events = parser.feed(data[split:])
        tail = data[len(REQUEST):]
    else:
        tail = data[len(REQUEST):split]
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert events[0].upgrade
    assert parser.take_tunnel_bytes() == tail
    assert parser.take_tunnel_bytes() == b""                  # handed over once
    assert parser.feed(b"more") == []                         # no longer parsed


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("split", range(len(RESPONSE) - 3, len(RESPONSE) + len(FRAMES), 3))
def test_101_leaves_the_rest_to_the_tunnel(adapter: str, split: int) -> None:
    parser = get_parsers(adapter)[1]()
    parser.expect("GET")
    data = RESPONSE + FRAMES
    events = parser.feed(data[:split])
    if split < len(RESPONSE):
        assert events == []
        events = parser.feed(data[split:])
        tail = data[len(RESPONSE):]
    else:
        tail = data[len(RESPONSE):split]
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].status == 101
    assert parser.take_tunnel_bytes() == tail
    assert parser.feed(b"more") == []


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_plain_requests_leave_nothing_for_a_tunnel(adapter: str) -> None:
    parser = get_parsers(adapter)[0]()
    events = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage] * 2
    assert parser.take_tunnel_bytes() == b""
