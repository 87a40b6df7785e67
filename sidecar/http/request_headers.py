"""Envoy's request header work at the connection manager (its mutateRequestHeaders):
hop-by-hop headers dropped, x-forwarded-for / x-forwarded-proto / x-envoy-external-address
under use_remote_address, x-request-id generated."""

from __future__ import annotations

import os

from config import model
from sidecar.codec.events import Headers
from sidecar.netinfo import is_loopback, local_address

# Request headers not forwarded: the downstream hop's own (the router re-frames
# the body and writes Host), and one Envoy always sets itself.
DROPPED = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                     "upgrade", "content-length", "host", "x-envoy-expected-rq-timeout-ms",
                     # Envoy 1.40 strips these from every request it deems external, which
                     # without internal_address_config is every request (so never honoured).
                     "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
                     "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names",
                     "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
                     "x-envoy-hedge-on-per-try-timeout", "x-envoy-internal"))

_random_hex = bytearray()     # pre-drawn random hex digits, consumed from the end


def request_id() -> str:
    """A random UUIDv4 string (RFC 9562: version nibble 4, variant 8-b).

    Random bytes are drawn 4 KiB at a time: one os.urandom syscall per 256 ids
    instead of one per request (uuid.uuid4), and only slicing per id.
    """
    global _random_hex
    if not _random_hex:
        _random_hex = bytearray(os.urandom(4096).hex(), "ascii")
    h = _random_hex[-32:].decode("ascii")
    del _random_hex[-32:]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# The variant's two top bits are 10: any hex digit maps onto 8, 9, a or b.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def forwarded_headers(raw: Headers, cfg: model.HttpConnectionManager, remote_ip: str,
                      expect_continue: bool) -> tuple[Headers, str]:
    """The headers to forward, and the Host value (first one wins), in one pass over ``raw``.

    Expect goes when the connection manager answers 100-continue itself (Envoy's
    default, proxy_100_continue off).  Positions found in the pass are only
    replaced or appended to afterwards, so they stay valid.
    """
    edge = cfg.use_remote_address
    authority = ""
    headers: Headers = []
    xfp = xff = rid = -1     # positions in ``headers``, -1 when absent
    for name, value in raw:
        if name in DROPPED:
            if name == "host" and not authority:
                authority = value
            continue
        if name[0] == "x":
            if name == "x-forwarded-proto":
                xfp = len(headers)
            elif name == "x-forwarded-for":
                xff = len(headers)
            elif name == "x-request-id":
                rid = len(headers)
            elif edge and name == "x-envoy-external-address":
                continue        # set below from the real peer
        elif expect_continue and name == "expect":
            continue
        headers.append((name, value))
    if edge:
        # This hop's peer is the client: Envoy appends it (this host's own address
        # when the peer is loopback), marks it external and sets the protocol it saw.
        if not cfg.skip_xff_append:
            peer = local_address() if is_loopback(remote_ip) else remote_ip
            if xff >= 0:
                headers[xff] = ("x-forwarded-for", f"{headers[xff][1]},{peer}")
            else:
                headers.append(("x-forwarded-for", peer))
        headers.append(("x-envoy-external-address", remote_ip))
        if xfp >= 0:
            headers[xfp] = ("x-forwarded-proto", "http")
        else:
            headers.append(("x-forwarded-proto", "http"))
    elif xfp < 0:
        headers.append(("x-forwarded-proto", "http"))
    if cfg.generate_request_id:
        if rid < 0:
            headers.append(("x-request-id", request_id()))
        elif edge and not cfg.preserve_external_request_id:
            # An external request's id is not trusted (Envoy regenerates it at the edge).
            headers[rid] = ("x-request-id", request_id())
    return headers, authority
