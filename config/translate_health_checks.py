"""Cluster.health_checks (envoy.config.core.v3.HealthCheck) -> model.HealthCheck.

Validation follows Envoy 1.40's (protoc-gen-validate rules and the checker
constructors): timeout, interval and both thresholds are required, durations
that are set must be positive, a checker kind is required, expected status
ranges lie in [100, 600).  What sidecar does not implement is rejected with its
path, never ignored.
"""

from __future__ import annotations

import string

from typing import Any

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, wrapped

# The HealthCheck fields sidecar implements (custom_health_check, alt_port, event
# logging, TLS options and transport socket matching are not).
SUPPORTED = ("timeout", "interval", "unhealthy_threshold", "healthy_threshold", "initial_jitter",
             "interval_jitter", "interval_jitter_percent", "no_traffic_interval",
             "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
             "healthy_edge_interval", "reuse_connection", "always_log_health_check_failures",
             "http_health_check", "tcp_health_check", "grpc_health_check")


def health_checks(t: TranslatorBase, c: Message, path: str) -> model.HealthCheck | None:
    """The cluster's health check (sidecar runs one per cluster), or None without any."""
    checks = c.health_checks
    if not checks:
        return None
    if len(checks) > 1:
        t.error(f"{path}.health_checks[1]", "only one health check per cluster is supported yet")
    check = health_check(t, checks[0], f"{path}.health_checks[0]")
    if check is not None and check.grpc is not None and not _speaks_http2(c):
        t.error(f"{path}.health_checks[0].grpc_health_check",
                f"{c.name} cluster must support HTTP/2 for gRPC healthchecking")
    return check


def _speaks_http2(c: Message) -> bool:
    """Whether the cluster's HttpProtocolOptions say HTTP/2 (Envoy's gRPC checker requires it;
    the options themselves are validated by the cluster translator)."""
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    for any_msg in c.typed_extension_protocol_options.values():
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        if any_msg.Unpack(opts) and opts.HasField("explicit_http_config"):
            if opts.explicit_http_config.WhichOneof("protocol_config") == "http2_protocol_options":
                return True
    return False


def health_check(t: TranslatorBase, hc: Message, path: str) -> model.HealthCheck | None:
    t.only(hc, path, SUPPORTED)
    durations: dict[str, float] = {}
    for name in ("timeout", "interval"):
        if not hc.HasField(name):
            t.error(f"{path}.{name}", "value is required")
    for name in ("timeout", "interval", "no_traffic_interval", "no_traffic_healthy_interval",
                 "unhealthy_interval", "unhealthy_edge_interval", "healthy_edge_interval"):
        if hc.HasField(name):
            durations[name] = _ms(getattr(hc, name))
            if durations[name] <= 0:
                t.error(f"{path}.{name}", "value must be greater than 0s")
    for name in ("unhealthy_threshold", "healthy_threshold"):
        if not hc.HasField(name):
            t.error(f"{path}.{name}", "value is required")
    kind = hc.WhichOneof("health_checker")
    if kind is None:
        t.error(path, "health_checker is required (http_health_check, tcp_health_check or "
                "grpc_health_check)")
    http = tcp = grpc = None
    if kind == "http_health_check":
        http = http_health_check(t, hc.http_health_check, f"{path}.http_health_check")
    elif kind == "tcp_health_check":
        tcp = tcp_health_check(t, hc.tcp_health_check, f"{path}.tcp_health_check")
    elif kind == "grpc_health_check":
        grpc = grpc_health_check(t, hc.grpc_health_check, f"{path}.grpc_health_check")
    if "timeout" not in durations or "interval" not in durations or kind is None:
        return None
    # Envoy's defaults (HealthCheckerImplBase): each unset interval falls back on another.
    interval = durations["interval"]
    no_traffic = durations.get("no_traffic_interval", 60.0)
    unhealthy = durations.get("unhealthy_interval", interval)
    return model.HealthCheck(
        timeout=durations["timeout"], interval=interval,
        unhealthy_threshold=wrapped(hc, "unhealthy_threshold", 0),
        healthy_threshold=wrapped(hc, "healthy_threshold", 0),
        http=http, tcp=tcp, grpc=grpc,
        initial_jitter=_ms(hc.initial_jitter),
        interval_jitter=_ms(hc.interval_jitter),
        interval_jitter_percent=hc.interval_jitter_percent,
        no_traffic_interval=no_traffic,
        no_traffic_healthy_interval=durations.get("no_traffic_healthy_interval", no_traffic),
        unhealthy_interval=unhealthy,
        unhealthy_edge_interval=durations.get("unhealthy_edge_interval", unhealthy),
        healthy_edge_interval=durations.get("healthy_edge_interval", interval),
        reuse_connection=wrapped(hc, "reuse_connection", True),
        always_log_health_check_failures=hc.always_log_health_check_failures)


def http_health_check(t: TranslatorBase, h: Message, path: str) -> model.HttpHealthCheck:
    t.only(h, path, ("host", "path", "request_headers_to_add", "request_headers_to_remove",
                     "expected_statuses", "retriable_statuses", "codec_client_type", "method",
                     "send", "receive", "response_buffer_size"))
    if not h.path:
        t.error(f"{path}.path", "value length must be at least 1 characters")
    if h.codec_client_type != 0:
        t.error(f"{path}.codec_client_type", "only HTTP1 health checks are supported yet")
    adds = _header_options(t, h.request_headers_to_add, f"{path}.request_headers_to_add")
    removes = []
    for i, name in enumerate(h.request_headers_to_remove):
        name = name.lower()
        if name.startswith(":") or name == "host":
            t.error(f"{path}.request_headers_to_remove[{i}]",
                    ":-prefixed or host headers may not be removed")
        removes.append(name)
    expected = _ranges(t, h.expected_statuses, f"{path}.expected_statuses", "expected") or ((200, 201),)
    retriable = _ranges(t, h.retriable_statuses, f"{path}.retriable_statuses", "retriable")
    method = _METHODS.get(h.method, "GET")
    if h.method == 6:
        t.error(f"{path}.method", "value must not be in list [CONNECT]")
    send = _payload(t, h.send, f"{path}.send") if h.HasField("send") else b""
    if send and method not in ("POST", "PUT", "PATCH", "OPTIONS"):
        t.error(f"{path}.send", f"HTTP health check cannot specify a request payload with method "
                f"'{method}'. Only methods that support a request body (POST, PUT, PATCH, "
                "OPTIONS) can be used with payload.")
    receive = tuple(_payload(t, p, f"{path}.receive[{i}]") for i, p in enumerate(h.receive))
    return model.HttpHealthCheck(path=h.path, host=h.host, headers_to_add=adds,
                                 headers_to_remove=tuple(removes), expected_statuses=expected,
                                 retriable_statuses=retriable, method=method, send=send,
                                 receive=receive,
                                 response_buffer_size=wrapped(h, "response_buffer_size", 1024))


# envoy.config.core.v3.RequestMethod (METHOD_UNSPECIFIED: GET)
_METHODS = {1: "GET", 2: "HEAD", 3: "POST", 4: "PUT", 5: "DELETE", 6: "CONNECT", 7: "OPTIONS",
            8: "TRACE", 9: "PATCH"}


def _header_options(t: TranslatorBase, items: Any,
                    path: str) -> tuple[model.HeaderValueOption, ...]:
    """request_headers_to_add: HeaderValueOptions with plain values (no %formatters% yet)."""
    adds = []
    for i, hv in enumerate(items):
        p = f"{path}[{i}]"
        option = t.header_value_option(hv, p)
        if option.name.startswith(":") or option.name == "host":
            t.error(f"{p}.header.key", ":-prefixed or host headers may not be modified")
        adds.append(option)
    return tuple(adds)


def _ranges(t: TranslatorBase, ranges: list[Message], path: str,
            which: str) -> tuple[tuple[int, int], ...]:
    """Int64Range [start, end) status ranges, checked as Envoy's HttpStatusChecker does."""
    out = []
    for i, r in enumerate(ranges):
        p = f"{path}[{i}]"
        problem = ""
        if r.start >= r.end:
            problem = f"expecting start < end, but found start={r.start} and end={r.end}"
        elif r.start < 100:
            problem = f"expecting start >= 100, but found start={r.start}"
        elif r.end > 600:
            problem = f"expecting end <= 600, but found end={r.end}"
        if problem:
            t.error(p, f"Invalid http {which} status range: {problem}")
        else:
            out.append((r.start, r.end))
    return tuple(out)


def tcp_health_check(t: TranslatorBase, h: Message, path: str) -> model.TcpHealthCheck:
    t.only(h, path, ("send", "receive"))
    send = _payload(t, h.send, f"{path}.send") if h.HasField("send") else b""
    receive = tuple(_payload(t, p, f"{path}.receive[{i}]") for i, p in enumerate(h.receive))
    return model.TcpHealthCheck(send=send, receive=receive)


def _payload(t: TranslatorBase, p: Message, path: str) -> bytes:
    """A Payload: ``text`` is hex (Envoy rejects odd or non-hex text), ``binary`` raw bytes."""
    which = p.WhichOneof("payload")
    if which == "binary":
        return bytes(p.binary)
    if which == "text":
        try:
            if len(p.text) % 2 or not all(ch in string.hexdigits for ch in p.text):
                raise ValueError
            return bytes.fromhex(p.text)
        except ValueError:
            t.error(f"{path}.text", f"invalid hex string '{p.text}'")
            return b""
    t.error(path, "payload is required (text or binary)")
    return b""


def grpc_health_check(t: TranslatorBase, g: Message, path: str) -> model.GrpcHealthCheck:
    t.only(g, path, ("service_name", "authority", "initial_metadata"))
    metadata = _header_options(t, g.initial_metadata, f"{path}.initial_metadata")
    for i, option in enumerate(metadata):
        # The headers of the call itself: grpcio sets them, an added value would not go
        # out as Envoy sends it.
        if option.name in ("content-type", "te", "user-agent") or option.name.startswith("grpc-"):
            t.error(f"{path}.initial_metadata[{i}].header.key",
                    f"{option.name} is not supported in gRPC health check metadata yet")
    return model.GrpcHealthCheck(service_name=g.service_name, authority=g.authority,
                                 initial_metadata=metadata)


def _ms(duration: Message) -> float:
    """Envoy keeps health check durations in whole milliseconds, truncated (PROTOBUF_GET_MS_*)."""
    return (duration.seconds * 1000 + duration.nanos // 1_000_000) / 1000
