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


def request_id() -> str:
    """A random UUIDv4 string (RFC 9562: version nibble 4, variant 8-b), one of a batch."""
    if not _ids:
        _draw_ids()
    return _ids.pop()


# Ids are made 1,024 at a time, from one os.urandom call (uuid.uuid4 makes one per
# id) and a fixed number of C-level passes over the batch: each of an id's 30 random
# digits is a strided translate of one nibble of every id's 16 random bytes into a
# strided slice of the batch's text.  Per request only list.pop() remains.
_BATCH = 1024
_TEMPLATE = b"xxxxxxxx-xxxx-4xxx-vxxx-xxxxxxxxxxxx\n"
_HEX = b"0123456789abcdef"
_HIGH = bytes(_HEX[b >> 4] for b in range(256))
_LOW = bytes(_HEX[b & 15] for b in range(256))
_VARIANT = bytes(b"89ab"[b & 3] for b in range(256))    # the variant's top bits are 10
_DIGITS = [i for i, c in enumerate(_TEMPLATE) if c == ord("x")]      # 30 of them
_ids: list[str] = []


def _draw_ids() -> None:
    raw = os.urandom(16 * _BATCH)
    size = len(_TEMPLATE)
    text = bytearray(_TEMPLATE * _BATCH)
    for k, pos in enumerate(_DIGITS):
        text[pos::size] = raw[k // 2::16].translate(_LOW if k & 1 else _HIGH)
    text[_TEMPLATE.index(b"v")::size] = raw[15::16].translate(_VARIANT)
    _ids.extend(text.decode("ascii").split("\n")[:-1])


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
