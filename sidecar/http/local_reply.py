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


def upstream_protocol_error() -> LocalReply:
    return LocalReply(502, (_RESET_PREFIX + "protocol error").encode(), "UPE",
                      "upstream_reset_before_response_started{protocol_error}")


def overflow() -> LocalReply:
    """A circuit breaker of the cluster is open: the request is not sent."""
    return LocalReply(503, (_RESET_PREFIX + "overflow").encode(), "UO",
                      "upstream_reset_before_response_started{overflow}",
                      [("x-envoy-overloaded", "true")])


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


def build_response(reply: LocalReply, is_head: bool = False) -> Response:
    """The local reply as a Response: text/plain body when there is one, as Envoy."""
    headers = list(reply.headers)
    body = reply.body
    if body:
        headers.append(("content-type", "text/plain"))
    response = Response(reply.status, headers, None if is_head else body, content_length=len(body))
    response.keep_alive = not reply.close_connection
    return response
