"""envoy.filters.listener.http_inspector: "http/1.1", "http/1.0" or "h2c" from a connection's
first bytes, so filter_chain_match.application_protocols can pick an HTTP chain.

Only the request line is looked at (Envoy runs its HTTP/1 parser on it); bytes that cannot
begin an HTTP request end the inspection with no protocol.
"""

from __future__ import annotations

import re

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A request line: token method, a target without spaces, HTTP/1.x.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/1\.([01])\r?\n")
_METHOD_PREFIX = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*( [^ \r\n]*( H?T?T?P?/?1?\.?[01]?\r?)?)?")
MAX_INSPECT = 64 * 1024


def inspect(data: bytes, eof: bool = False) -> tuple[bool, str]:
    """(done, protocol): protocol is "" when the bytes are not HTTP; not done = read more."""
    if data.startswith(H2_PREFACE):
        return True, "h2c"
    if H2_PREFACE.startswith(data):
        return eof, ""
    m = _REQUEST_LINE.match(data)
    if m:
        return True, "http/1.1" if m.group(1) == b"1" else "http/1.0"
    if b"\n" in data or eof or len(data) >= MAX_INSPECT:
        return True, ""
    # Still a possible request line prefix?
    prefix = _METHOD_PREFIX.match(data)
    if prefix is None or prefix.end() != len(data):
        return True, ""
    return False, ""
