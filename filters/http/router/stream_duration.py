"""A route's max_stream_duration, as Envoy's connection manager applies it to the stream.

The stream's limit is ``max_stream_duration``; with ``grpc_timeout_header_max`` set, a
request's grpc-timeout header replaces it, capped by that maximum (0: no cap) and less
``grpc_timeout_header_offset`` when larger than it.  When it expires the proxy answers
408 "downstream duration timeout" (gRPC: DEADLINE_EXCEEDED), flag DT.
"""

from __future__ import annotations

from config import model
from sidecar.http.message import Request

# grpc-timeout units (gRPC over HTTP/2: at most 8 digits, then the unit)
UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout(value: str) -> float | None:
    """Seconds of a grpc-timeout header value ("250m": 0.25), None when malformed."""
    digits, unit = value[:-1], UNITS.get(value[-1:])
    if unit is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


def stream_duration(action: model.RouteAction, request: Request) -> float | None:
    """The request's stream duration limit under ``action``, None for none."""
    limit = action.max_stream_duration
    header_max = action.grpc_timeout_header_max
    if header_max is not None:
        value = request.header("grpc-timeout")
        timeout = grpc_timeout(value) if value else None
        if timeout is not None:
            if header_max > 0 and (timeout == 0 or timeout > header_max):
                timeout = header_max
            offset = action.grpc_timeout_header_offset
            if offset and timeout > offset:
                timeout -= offset
            limit = timeout
    return limit or None        # 0: no limit
