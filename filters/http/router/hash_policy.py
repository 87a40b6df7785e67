"""A route's hash_policy evaluated for one request, as Envoy's Http::HashPolicyImpl::generateHash.

Each policy yields a 64-bit hash or nothing; the ones that yield are combined as
``rotl(h, 1) ^ new`` (so two equal policies don't cancel out), and a terminal
policy that produced a hash ends the walk.  The router calls this only for a
route with a hash_policy forwarding to a RING_HASH or MAGLEV cluster (Envoy
computes the hash only when a hashing balancer asks for it): the hot path of
other routes never comes here.

A cookie policy with a ``ttl`` and no such cookie in the request makes Envoy
generate one: ``xxHash64(remote address + local address)`` (the connection's, with
ports) in hex, hashed as the key and sent back in a Set-Cookie response header.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from config import model
from sidecar.http.message import Request
from sidecar.upstream.hashing import MASK, xxhash64



def compute_hash(policies: tuple[model.HashPolicy, ...], request: Request,
                 use_remote_address: bool, trusted_hops: int) -> tuple[int | None, str | None]:
    """(hash or None, Set-Cookie value to add to the response or None)."""
    h: int | None = None
    set_cookie: str | None = None
    for policy in policies:
        kind = policy.kind
        new: int | None = None
        if kind == "header":
            new = _header_hash(policy, request)
        elif kind == "cookie":
            value = cookie_value(request.headers, policy.name)
            if value:
                new = xxhash64(value.encode())
            elif policy.cookie_ttl is not None:
                generated = _generated_cookie(request)
                if generated is not None:
                    new = xxhash64(generated.encode())
                    set_cookie = set_cookie_value(policy, generated)
        elif kind == "source_ip":
            ip = downstream_ip(request, use_remote_address, trusted_hops)
            if ip is not None:
                new = xxhash64(ip.encode())
        elif kind == "query_parameter":
            param = query_value(request.path, policy.name)
            if param is not None:
                new = xxhash64(param.encode())
        if new is not None:
            h = new if h is None else ((((h << 1) | (h >> 63)) & MASK) ^ new)
        if policy.terminal and h is not None:
            break
    return h, set_cookie


def _header_hash(policy: model.HashPolicy, request: Request) -> int | None:
    name = policy.name
    if name[0] == ":" or name == "host":
        one = {":authority": request.authority, "host": request.authority,
               ":path": request.path, ":method": request.method,
               ":scheme": request.scheme}.get(name)
        values = [one] if one is not None else []
    else:
        values = [v for k, v in request.headers if k == name]
    if not values:
        return None
    rewrite = policy.regex_rewrite
    if rewrite is not None:
        values = [rewrite.pattern.sub(rewrite.substitution, v) for v in values]
    if len(values) == 1:
        return xxhash64(values[0].encode())
    # Envoy sorts the values (order-independent) and hashes them in a chain, each
    # one seeded with the hash of those before (its HashUtil::xxHash64 of a span).
    h = 0
    for v in sorted(values):
        h = xxhash64(v.encode(), h)
    return h


def cookie_value(headers: list[tuple[str, str]], name: str) -> str:
    """The value of cookie ``name`` in the Cookie headers ("" if absent), as Envoy's
    Utility::parseCookieValue: ';'-separated pairs, leading spaces skipped, a
    double-quoted value unquoted, the first match wins."""
    for k, header in headers:
        if k != "cookie":
            continue
        for part in header.split(";"):
            if not part:
                continue
            eq = part.find("=")
            if eq < 0:
                continue
            if part[:eq].lstrip(" ") != name:
                continue
            value = part[eq + 1:]
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
            break       # Envoy: an empty value ends this header; the next one may have it
    return ""


def query_value(path: str, name: str) -> str | None:
    """The first value of query parameter ``name``, raw (Envoy does not decode it); a
    parameter without '=' has the value ""."""
    query = path.partition("?")[2]
    if not query:
        return None
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if key == name:
            return value if eq else ""
    return None


def downstream_ip(request: Request, use_remote_address: bool, trusted_hops: int) -> str | None:
    """Envoy's downstream remote address as its addressAsString prints it (or None): the
    peer with use_remote_address (and no trusted hops), else the x-forwarded-for entry
    ``trusted_hops`` from the right (with use_remote_address the connection manager
    appended the peer there), else the peer."""
    peer = _socket_ip(request.info.downstream_remote_address)
    if use_remote_address and trusted_hops == 0:
        return peer
    xff = None
    for k, v in request.headers:
        if k == "x-forwarded-for":
            xff = v if xff is None else f"{xff},{v}"
    if not xff:
        return peer
    entries = [e.strip() for e in xff.split(",")]
    if len(entries) <= trusted_hops:
        return peer
    return _parsed_ip(entries[len(entries) - 1 - trusted_hops]) or peer


def _socket_ip(address: Any) -> str | None:
    """A socket address's IP, already in canonical form (the kernel's text)."""
    if not address:
        return None
    text: str = address[0]
    # A dual-stack listener's IPv4 peers are IPv4 to Envoy (not ::ffff:a.b.c.d).
    if text.startswith("::ffff:") and "." in text:
        return text[7:]
    return text


def _parsed_ip(text: str) -> str | None:
    """An x-forwarded-for entry: a valid IP in canonical form, or None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped if mapped is not None else ip)


def _address_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _generated_cookie(request: Request) -> str | None:
    """Envoy's generateCookie value: hex xxHash64 of the connection's remote and local
    addresses with their ports (the peer's, even where source_ip would take
    x-forwarded-for: checked against Envoy 1.40)."""
    info = request.info
    local = info.downstream_local_address
    peer = info.downstream_remote_address
    if not peer or not local:
        return None
    remote_ip = _socket_ip(peer)
    local_ip = _socket_ip(local)
    if remote_ip is None or local_ip is None:
        return None
    text = _address_text(remote_ip, peer[1]) + _address_text(local_ip, local[1])
    return "%016x" % xxhash64(text.encode())


def set_cookie_value(policy: model.HashPolicy, value: str) -> str:
    """Envoy's Utility::makeSetCookieValue (httponly): quoted value, Max-Age unless the
    ttl is 0 (a session cookie), Path, the attributes, HttpOnly."""
    out = f'{policy.name}="{value}"'
    if policy.cookie_ttl:
        out += f"; Max-Age={policy.cookie_ttl}"
    if policy.cookie_path:
        out += f"; Path={policy.cookie_path}"
    for name, attr in policy.cookie_attributes:
        out += f"; {name}={attr}" if attr else f"; {name}"
    return out + "; HttpOnly"
