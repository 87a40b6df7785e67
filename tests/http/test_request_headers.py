"""Envoy's request header work (sidecar/http/request_headers.py) on header lists."""

from __future__ import annotations

import re
import uuid

from config import model
from sidecar.http.request_headers import forwarded_headers, request_id
from sidecar.netinfo import local_address


def hcm(**kw) -> model.HttpConnectionManager:
    return model.HttpConnectionManager(stat_prefix="t", route_config=model.RouteConfig("r", ()),
                                       http_filters=(), **kw)


def test_hop_by_hop_dropped_host_kept_aside_defaults_added():
    raw = [("host", "a.com"), ("connection", "keep-alive"), ("keep-alive", "5"),
           ("content-length", "3"), ("x-envoy-expected-rq-timeout-ms", "1"), ("accept", "*/*")]
    headers, authority = forwarded_headers(raw, hcm(), "10.0.0.1", False)
    assert authority == "a.com"
    names = [k for k, _ in headers]
    assert names[:1] == ["accept"]
    assert ("x-forwarded-proto", "http") in headers
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        dict(headers)["x-request-id"])
    assert "x-forwarded-for" not in names          # use_remote_address off: untouched


def test_edge_rewrites_in_place_even_after_dropped_headers():
    # Expect and x-envoy-external-address come first and are dropped: the positions of
    # the headers after them must still be right when they are rewritten.
    raw = [("expect", "100-continue"), ("x-envoy-external-address", "spoofed"),
           ("x-forwarded-for", "1.1.1.1"), ("x-forwarded-proto", "https"),
           ("x-request-id", "client"), ("host", "a")]
    headers, _ = forwarded_headers(raw, hcm(use_remote_address=True), "10.0.0.9", True)
    d = dict(headers)
    assert "expect" not in d
    assert d["x-forwarded-for"] == "1.1.1.1,10.0.0.9"
    assert d["x-forwarded-proto"] == "http"
    assert d["x-envoy-external-address"] == "10.0.0.9"
    assert d["x-request-id"] != "client"
    assert [k for k, _ in headers].count("x-envoy-external-address") == 1


def test_loopback_peer_is_recorded_as_this_hosts_address():
    headers, _ = forwarded_headers([("host", "a")], hcm(use_remote_address=True), "127.0.0.1", False)
    assert dict(headers)["x-forwarded-for"] == local_address()


def test_preserved_request_id_and_skip_xff_append():
    cfg = hcm(use_remote_address=True, preserve_external_request_id=True, skip_xff_append=True)
    headers, _ = forwarded_headers([("x-request-id", "keep")], cfg, "10.0.0.1", False)
    d = dict(headers)
    assert d["x-request-id"] == "keep" and "x-forwarded-for" not in d


def test_request_ids_are_distinct_uuid4s():
    ids = [request_id() for _ in range(3000)]     # crosses the 1,024-id refills
    assert len(set(ids)) == 3000
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_request_id_digits_are_independent():
    """Each random digit takes its own nibble: no two positions agree much more often
    than chance (1 in 16), which a digit wired to the wrong nibble would."""
    ids = [request_id().replace("-", "") for _ in range(3000)]
    random_positions = [i for i in range(32) if i not in (12, 16)]   # version, variant
    for i in random_positions:
        assert len({rid[i] for rid in ids}) == 16
        for j in random_positions:
            if i < j:
                same = sum(rid[i] == rid[j] for rid in ids)
                assert same < 3000 * 0.12, (i, j, same)
    assert {rid[16] for rid in ids} == set("89ab")
