"""What every connection manager (HTTP/1 and HTTP/2) does to a response: local replies with
the route's response headers, Date and Server, and the access log lines."""

from __future__ import annotations

from typing import Any

from config import model
from filters.http.router.headers import apply_mutations
from sidecar.codec.events import Headers
from sidecar.http import local_reply
from sidecar.http.access_log import render
from sidecar.http.dates import http_date
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import BodyStream, Request, Response


def local_response(request: Request, reply: LocalReply) -> Response:
    """The local reply as a response, its flag and details recorded on the request; to a
    gRPC request a gRPC one (HTTP 200, grpc-status and grpc-message), as Envoy answers."""
    if reply.flag:
        request.info.set_flag(reply.flag)
    request.info.response_code_details = reply.details
    if is_grpc(request):
        response = local_reply.build_grpc_response(reply)
    else:
        response = local_reply.build_response(reply, request.method == "HEAD")
    entry = request.route
    if entry is not None:
        # Once a route is chosen, Envoy adds its response headers to local replies
        # too (a 503 from the router, a fault filter's abort).
        for mutations in entry.response_mutations:
            response.headers = apply_mutations(response.headers, mutations)
    return response


def is_grpc(request: Request) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: application/grpc, or it followed by + or ;."""
    content_type = request.header("content-type")
    if content_type is None or not content_type.startswith("application/grpc"):
        return False
    return len(content_type) == 16 or content_type[16] in "+;"


def add_date_server(headers: Headers, cfg: model.HttpConnectionManager) -> None:
    """Date when the upstream (or a direct response) left it out; Server as configured."""
    for header in headers:
        if header[0] == "date":
            break
    else:
        headers.append(("date", http_date()))
    transformation = cfg.server_header_transformation
    if transformation == "OVERWRITE":
        # The router already dropped the upstream's Server header.
        headers.append(("server", cfg.server_name))
    elif transformation == "APPEND_IF_ABSENT":
        if not any(h[0] == "server" for h in headers):
            headers.append(("server", cfg.server_name))


def log_refused(ctx: Any, request: Request, peer: Any, local: Any, status: int, headers: Headers,
                details: str, flag: str = "") -> None:
    """Log a request the connection manager or its codec refused before any filter saw it
    (``request`` made up for the line: the head as read, or empty when none was)."""
    info = request.info
    info.start_time = ctx.loop.time()
    if flag:
        info.set_flag(flag)
    info.response_code_details = details
    info.downstream_remote_address = peer
    info.downstream_local_address = local
    log_access(ctx, request, status, headers)


def log_access(ctx: Any, request: Request, status: int, headers: Headers) -> None:
    """One line per configured access log (status 0: never answered, as Envoy logs it)."""
    info = request.info
    body = request.body
    if isinstance(body, BodyStream):
        info.bytes_received = body.received     # (an upgrade's tunnel counted its own)
    duration = ctx.loop.time() - info.start_time
    for log_file, tokens in ctx.access_logs:
        log_file.write(render(tokens, request, status, headers, duration))
