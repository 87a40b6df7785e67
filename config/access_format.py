"""Envoy access-log format strings ("%RESPONSE_CODE% %REQ(X-FOO?:PATH)%...") parsed into tokens.

Pure parsing and validation, done at config load: an operator we don't
implement is an error naming it.  sidecar/http/access_log.py renders the tokens.
"""

from __future__ import annotations

import re

# Envoy's default format for file/stdout access logs (no log_format given).
DEFAULT_FORMAT = ('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
                  '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
                  '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
                  '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')

# Operators without arguments that the renderer implements.
SIMPLE_OPERATORS = frozenset((
    "START_TIME", "PROTOCOL", "RESPONSE_CODE", "RESPONSE_FLAGS", "RESPONSE_CODE_DETAILS",
    "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "UPSTREAM_HOST", "UPSTREAM_CLUSTER",
    "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS", "ROUTE_NAME",
))
HEADER_OPERATORS = frozenset(("REQ", "RESP"))

_TOKEN = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?(?::(\d+))?%")

# A token is a literal string, or (operator, header names to try in order, max length).
Token = str | tuple[str, tuple[str, ...], int | None]


def parse_format(fmt: str) -> tuple[Token, ...]:
    """Split a format string into literals and operators; ValueError names what is unsupported."""
    tokens: list[Token] = []
    pos = 0
    for m in _TOKEN.finditer(fmt):
        if m.start() > pos:
            tokens.append(fmt[pos:m.start()])
        op, arg, length = m.group(1), m.group(2), m.group(3)
        if op in HEADER_OPERATORS:
            if not arg:
                raise ValueError(f"%{op}(...)% needs a header name")
            names = tuple(n.strip().lower() for n in arg.split("?"))
            tokens.append((op, names, int(length) if length else None))
        elif op in SIMPLE_OPERATORS and arg is None:
            tokens.append((op, (), int(length) if length else None))
        else:
            raise ValueError(f"access log operator %{op}{'(' + arg + ')' if arg else ''}% "
                             "is not supported by sidecar yet")
        pos = m.end()
    if pos < len(fmt):
        tokens.append(fmt[pos:])
    return tuple(tokens)
