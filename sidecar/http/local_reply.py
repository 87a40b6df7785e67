"""Local replies: the responses the proxy makes itself, with Envoy's statuses, bodies and flags.

Filters raise ``LocalReply``; the connection manager is the one place that
turns it into a response (DESIGN.md: errors become HTTP in exactly one place).
"""

from __future__ import annotations

from sidecar.http.message import Response

_RESET_PREFIX = "upstream connect error or disconnect/reset before headers. reset reason: "
_RETRIED_PREFIX = ("upstream connect error or disconnect/reset before headers. "
                   "retried and the latest reset reason: ")


class LocalReply(Exception):
    """Answer the request locally with ``status`` and ``body``, recording ``flag``."""

    def __init__(self, status: int, body: bytes = b"", flag: str = "",
                 details: str = "", headers: list[tuple[str, str]] | None = None,
                 close_connection: bool = False) -> None:
        super().__init__(details or f"local reply {status}")
        self.status = status
        self.body = body
        self.flag = flag
        self.details = details
        self.headers = headers or []
        self.close_connection = close_connection
        # The grpc-status of this reply to a gRPC request; None: mapped from ``status``.
        self.grpc_status: int | None = None


# Envoy 1.40's bodies, checked against the real binary.
def no_route() -> LocalReply:
    return LocalReply(404, b"", "NR", "route_not_found")


def no_cluster(status: int = 503) -> LocalReply:
    return LocalReply(status, b"", "NC", "cluster_not_found")


def no_healthy_upstream() -> LocalReply:
    return LocalReply(503, b"no healthy upstream", "UH", "no_healthy_upstream")


def connect_failure(transport_error: str = "") -> LocalReply:
    """A refused (or otherwise failed) connect; ``transport_error`` is the socket's error
    text ("Connection refused"), which Envoy names in the details, spaces as underscores."""
    reason = "remote_connection_failure"
    if transport_error:
        reason += "|delayed_connect_error:_" + transport_error.replace(" ", "_")
    return LocalReply(503, (_RESET_PREFIX + "remote connection failure").encode(), "UF",
                      f"upstream_reset_before_response_started{{{reason}}}")


def connect_timeout() -> LocalReply:
    return LocalReply(503, (_RESET_PREFIX + "connection timeout").encode(), "UF",
                      "upstream_reset_before_response_started{connection_timeout}")


def connection_termination() -> LocalReply:
    return LocalReply(503, (_RESET_PREFIX + "connection termination").encode(), "UC",
                      "upstream_reset_before_response_started{connection_termination}")


def remote_reset(refused: bool = False) -> LocalReply:
    """The upstream reset the HTTP/2 stream (RST_STREAM) before the response head."""
    reason = "remote refused stream reset" if refused else "remote reset"
    return LocalReply(503, (_RESET_PREFIX + reason).encode(), "UR",
                      f"upstream_reset_before_response_started{{{reason.replace(' ', '_')}}}")


def upstream_protocol_error() -> LocalReply:
    return LocalReply(502, (_RESET_PREFIX + "protocol error").encode(), "UPE",
                      "upstream_reset_before_response_started{protocol_error}")


def overflow() -> LocalReply:
    """A circuit breaker of the cluster is open: the request is not sent."""
    return LocalReply(503, (_RESET_PREFIX + "overflow").encode(), "UO",
                      "upstream_reset_before_response_started{overflow}",
                      [("x-envoy-overloaded", "true")])


def duration_timeout(request_complete: bool) -> LocalReply:
    """The stream's max_stream_duration (or its grpc-timeout) expired before the response
    head.  As Envoy 1.40 (Utility::maybeRequestTimeoutCode): 504 once the whole request
    came in, 408 while it was still coming; no response flag (DT is for connection
    durations)."""
    reply = LocalReply(504 if request_complete else 408, b"downstream duration timeout", "",
                       "max_duration_timeout")
    reply.grpc_status = 4           # DEADLINE_EXCEEDED, as Envoy answers a gRPC request
    return reply


def upstream_timeout() -> LocalReply:
    return LocalReply(504, b"upstream request timeout", "UT", "response_timeout")


def after_retries(reply: LocalReply) -> LocalReply:
    """The last attempt's failure once retries were made: Envoy words the reset body so."""
    body = reply.body
    if body.startswith(_RESET_PREFIX.encode()):
        body = (_RETRIED_PREFIX.encode() + body[len(_RESET_PREFIX):])
        return LocalReply(reply.status, body, reply.flag, reply.details, list(reply.headers),
                          reply.close_connection)
    return reply


# Envoy's Grpc::Utility::httpToGrpcStatus (the gRPC HTTP status mapping); others are UNKNOWN.
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_status_of(reply: LocalReply) -> int:
    return reply.grpc_status if reply.grpc_status is not None else HTTP_TO_GRPC.get(reply.status, 2)


def build_grpc_response(reply: LocalReply) -> Response:
    """The local reply to a gRPC request, as Envoy sends it: HTTP 200 without a body, the
    status in grpc-status (the reply's own, else mapped from the HTTP status) and the body
    text in grpc-message (percent-encoded where gRPC requires it)."""
    headers = [*reply.headers, ("content-type", "application/grpc"),
               ("grpc-status", str(grpc_status_of(reply)))]
    if reply.body:
        headers.append(("grpc-message", grpc_message(reply.body)))
    response = Response(200, headers, b"", content_length=0)
    response.keep_alive = not reply.close_connection
    return response


def grpc_message(text: bytes) -> str:
    """gRPC's grpc-message encoding: printable ASCII but '%' as is, every other byte %XX."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text)


def build_response(reply: LocalReply, is_head: bool = False) -> Response:
    """The local reply as a Response: text/plain body when there is one, as Envoy."""
    headers = list(reply.headers)
    body = reply.body
    if body:
        headers.append(("content-type", "text/plain"))
    response = Response(reply.status, headers, None if is_head else body, content_length=len(body))
    response.keep_alive = not reply.close_connection
    return response
