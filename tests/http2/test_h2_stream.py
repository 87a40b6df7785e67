"""h2_stream: Envoy's header limits and the split of a request HEADERS block."""

from __future__ import annotations

from sidecar.http.h2_stream import header_limit, split_headers

PSEUDO = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p?q=1"),
          (b":authority", b"example.com")]


def test_header_limit_counts_pseudo_headers_and_hpack_sizes():
    raw = PSEUDO + [(b"x-a", b"1")] * 96
    assert header_limit(raw, 100, 61440) == ""
    assert header_limit(raw + [(b"x-b", b"2")], 100, 61440) == "header_overflow"
    size = sum(len(n) + len(v) + 32 for n, v in raw)
    assert header_limit(raw, 100, size) == ""
    assert header_limit(raw, 100, size - 1) == "header_list_size_too_large"


def test_header_limit_names_whichever_limit_is_passed_first():
    big = PSEUDO + [(b"x-bomb", b"z" * 3000)] * 100      # over the size long before the count
    assert header_limit(big, 100, 61440) == "header_list_size_too_large"


def test_split_headers():
    raw = PSEUDO + [(b"content-length", b"5"), (b"expect", b"100-Continue"), (b"x-v", b"\xe9")]
    method, path, authority, scheme, headers, length, expect = split_headers(raw)
    assert (method, path, authority, scheme) == ("POST", "/p?q=1", "example.com", "http")
    assert headers == [("content-length", "5"), ("expect", "100-Continue"), ("x-v", "\xe9")]
    assert (length, expect) == (5, True)
    assert split_headers(PSEUDO + [(b"content-length", b"x")])[5] is None
