"""The network side of active health checks: one probe per host session, HTTP/1.1, TCP or gRPC.

Each probe keeps its connection between checks unless ``reuse_connection`` is
false (Envoy's default is to reuse), and answers ``check()`` with an Outcome the
session's state machine (sidecar/upstream/health_check.py) turns into health.
Health check connections are not the cluster's traffic: they count in no
cluster.<name>.upstream_cx_* stat, as in Envoy.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any, Protocol

import h11

from config import model
from sidecar.upstream.host import EXCLUDED_VIA_IMMEDIATE_HC_FAIL

if TYPE_CHECKING:
    from sidecar.upstream.health_check import HealthChecker, HostSession

log = logging.getLogger(__name__)

USER_AGENT = "Envoy/HC"          # what Envoy's health checkers send as user-agent


class Outcome(enum.Enum):
    SUCCESS = 0
    DEGRADED = 1          # passed, with x-envoy-degraded
    FAILED = 2            # an active failure: ejects at once
    RETRIABLE = 3         # a retriable_statuses answer: counts to unhealthy_threshold
    NETWORK = 4           # connect failure, reset, close: counts to unhealthy_threshold
    TIMEOUT = 5           # no answer within timeout (a network failure too)
    PASSIVE = 6           # x-envoy-immediate-health-check-fail seen by the router


class Probe(Protocol):
    async def check(self) -> Outcome: ...

    def reset(self) -> None:
        """The check timed out: drop the connection (the next check opens a new one)."""

    def close(self) -> None: ...


def make_probe(checker: HealthChecker, session: HostSession) -> Probe:
    config = checker.config
    address, port = session.key
    if config.http is not None:
        return HttpProbe(session, address, port, http_request(config.http, checker.name),
                         config.http, config.reuse_connection)
    if config.tcp is not None:
        return TcpProbe(session, address, port, config.tcp, config.reuse_connection)
    assert config.grpc is not None
    return GrpcProbe(checker, address, port, config.grpc, config.reuse_connection)


# --- HTTP/1.1 ----------------------------------------------------------------------------

# Envoy keeps these request headers "inline" (O(1) slots: its own list, plus the custom ones
# that built-in extensions register); appending to one that is present joins the values with
# "," instead of adding a line.  Checked against Envoy 1.40 (appending each name twice).
INLINE_REQUEST_HEADERS = frozenset((
    "host", "user-agent", "te", "expect", "grpc-timeout", "content-length", "content-type",
    "connection", "keep-alive", "proxy-connection", "proxy-status", "transfer-encoding",
    "upgrade", "via", "x-request-id", "x-client-trace-id", "x-forwarded-for",
    "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-client-cert",
    "x-envoy-attempt-count", "x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node", "x-envoy-external-address", "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout", "x-envoy-internal", "x-envoy-ip-tags",
    "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names", "x-envoy-original-path", "x-envoy-original-url",
    "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms", "x-envoy-max-retries", "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-stream-duration-ms",
    # registered by extensions
    "accept", "accept-encoding", "authorization", "cache-control", "content-encoding",
    "grpc-accept-encoding", "if-match", "if-modified-since", "if-none-match",
    "if-unmodified-since", "origin", "pragma", "referer", "access-control-request-headers",
    "access-control-request-method"))


def http_request(config: model.HttpHealthCheck, cluster_name: str) -> h11.Request:
    """The request Envoy sends: GET path, host (http_health_check.host, else the cluster's
    name), user-agent Envoy/HC, then request_headers_to_remove / request_headers_to_add."""
    headers: list[tuple[str, str]] = [("host", config.host or cluster_name),
                                      ("user-agent", USER_AGENT)]
    headers = [(k, v) for k, v in headers if k not in config.headers_to_remove]
    for option in config.headers_to_add:
        if not option.value and not option.keep_empty_value:
            continue
        present = any(k == option.name for k, _ in headers)
        if option.action == "ADD_IF_ABSENT" and present:
            continue
        if option.action == "OVERWRITE_IF_EXISTS" and not present:
            continue
        if option.action in ("OVERWRITE_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS") and present:
            index = next(i for i, (k, _) in enumerate(headers) if k == option.name)
            headers = [(k, v) for k, v in headers if k != option.name]
            headers.insert(index, (option.name, option.value))
            continue
        if present and option.name in INLINE_REQUEST_HEADERS:
            index = next(i for i, (k, _) in enumerate(headers) if k == option.name)
            headers[index] = (option.name, f"{headers[index][1]},{option.value}")
            continue
        headers.append((option.name, option.value))
    if config.send:
        headers.append(("content-length", str(len(config.send))))
    return h11.Request(method=config.method, target=config.path, headers=headers)


def in_ranges(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(start <= status < end for start, end in ranges)


class _Http1Connection(asyncio.Protocol):
    """One health check connection: an h11 client, one request at a time."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]] | None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, request: h11.Request, body: bytes,
             keep: int) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]]] | None]:
        """Send a request; ``keep``: how many response body bytes to keep in ``body``
        (-1: all)."""
        assert self.transport is not None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.waiter = asyncio.get_running_loop().create_future()
        self.body = b""
        self.keep = keep
        data = self.h11.send(request)
        if body:
            data += self.h11.send(h11.Data(data=body))
        self.transport.write(data + self.h11.send(h11.EndOfMessage()))
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._events()

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        self._events()
        return None

    def _events(self) -> None:
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Response):
                    self.status, self.headers = event.status_code, list(event.headers)
                elif isinstance(event, h11.Data):
                    if self.keep < 0:
                        self.body += event.data
                    elif len(self.body) < self.keep:
                        self.body += event.data[:self.keep - len(self.body)]
                elif isinstance(event, h11.EndOfMessage):
                    self._resolve((self.status, self.headers))
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    self.abort()
                    return
        except h11.ProtocolError:
            self.abort()

    def _resolve(self, value: tuple[int, list[tuple[bytes, bytes]]] | None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def reusable(self) -> bool:
        return (not self.closed and self.h11.our_state is h11.DONE
                and self.h11.their_state is h11.DONE)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._resolve(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._resolve(None)     # mid-request: a network failure; idle: just gone, as Envoy


class HttpProbe:
    def __init__(self, session: HostSession, address: str, port: int, request: h11.Request,
                 config: model.HttpHealthCheck, reuse: bool) -> None:
        self.session = session
        self.address, self.port = address, port
        self.request = request
        self.config = config
        self.reuse = reuse
        self.conn: _Http1Connection | None = None

    async def check(self) -> Outcome:
        conn = self.conn
        if conn is None or not conn.reusable():
            if conn is not None:
                conn.abort()
            conn = self.conn = _Http1Connection()
            try:
                await asyncio.get_running_loop().create_connection(lambda: conn, self.address,
                                                                   self.port)
            except OSError:
                self.conn = None
                return Outcome.NETWORK
        config = self.config
        keep = 0 if not config.receive else (config.response_buffer_size or -1)
        result = await conn.send(self.request, config.send, keep)
        if result is None:
            self.conn = None
            return Outcome.NETWORK
        status, headers = result
        if not self.reuse or not conn.reusable():
            conn.abort()
            self.conn = None
        # Envoy's order: the body's payload first (a mismatch is an active failure), then
        # the status.
        body_mismatch = bool(config.receive) and not payload_match(config.receive, conn.body)
        if body_mismatch or not in_ranges(status, config.expected_statuses):
            if any(name.lower() == b"x-envoy-immediate-health-check-fail" for name, _ in headers):
                # Envoy: a failing answer that asks for it also excludes the host.
                self.session.mark(EXCLUDED_VIA_IMMEDIATE_HC_FAIL, True)
            if body_mismatch:
                return Outcome.FAILED
            if in_ranges(status, self.config.retriable_statuses):
                return Outcome.RETRIABLE
            return Outcome.FAILED
        if any(name.lower() == b"x-envoy-degraded" for name, _ in headers):
            return Outcome.DEGRADED
        return Outcome.SUCCESS

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None


# --- TCP ---------------------------------------------------------------------------------

def payload_match(blocks: tuple[bytes, ...], data: bytes) -> bool:
    """Envoy's PayloadMatcher: every block found, in order, not necessarily contiguous."""
    start = 0
    for block in blocks:
        index = data.find(block, start)
        if index < 0:
            return False
        start = index + len(block)
    return True


class _TcpConnection(asyncio.Protocol):
    def __init__(self, probe: TcpProbe) -> None:
        self.probe = probe
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[bool] | None = None
        self.closed = False
        self.expect_close = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # Envoy matches against everything received since the last pass.
        self.buffer += data
        if self.waiter is not None and payload_match(self.probe.config.receive, self.buffer):
            self.buffer = b""
            self._resolve(True)

    def _resolve(self, value: bool) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def abort(self) -> None:
        self.expect_close = True
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._resolve(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            self._resolve(False)
        elif not self.expect_close:
            # A kept connection closed between checks: Envoy's TCP checker counts a
            # network failure right away.
            self.probe.lost(self)


class TcpProbe:
    def __init__(self, session: HostSession, address: str, port: int,
                 config: model.TcpHealthCheck, reuse: bool) -> None:
        self.session = session
        self.address, self.port = address, port
        self.config = config
        self.reuse = reuse
        self.conn: _TcpConnection | None = None

    async def check(self) -> Outcome:
        conn = self.conn
        if conn is None or conn.closed:
            conn = self.conn = _TcpConnection(self)
            try:
                await asyncio.get_running_loop().create_connection(lambda: conn, self.address,
                                                                   self.port)
            except OSError:
                self.conn = None
                return Outcome.NETWORK
        assert conn.transport is not None
        if not self.config.receive:
            # A connect-only check (Envoy: success on connect, then close).
            conn.abort()
            self.conn = None
            return Outcome.SUCCESS
        conn.waiter = asyncio.get_running_loop().create_future()
        waiter = conn.waiter
        if self.config.send:
            conn.transport.write(self.config.send)
        if payload_match(self.config.receive, conn.buffer):
            conn.buffer = b""
            conn._resolve(True)
        if not await waiter:
            self.conn = None
            return Outcome.NETWORK
        if not self.reuse:
            conn.abort()
            self.conn = None
        return Outcome.SUCCESS

    def lost(self, conn: _TcpConnection) -> None:
        if conn is self.conn:
            self.conn = None
            self.session.connection_lost()

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None


# --- gRPC --------------------------------------------------------------------------------

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVING = 1

# What grpcio reports when the transport, not the service, failed: Envoy counts those as
# network failures (threshold), and any answered non-SERVING call as an active one.
_TRANSPORT_ERRORS = ("failed to connect", "connection refused", "socket closed",
                     "connection reset", "broken pipe", "goaway", "endpoint closing",
                     "connections to all backends failing")


def encode_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest {string service = 1}."""
    if not service:
        return b""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def decode_status(message: bytes) -> int:
    """grpc.health.v1.HealthCheckResponse.status (field 1, an enum); 0 UNKNOWN when absent."""
    status = 0
    i = 0
    while i < len(message):
        key, i = _read_varint(message, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(message, i)
            if field == 1:
                status = value
        elif wire == 2:
            length, i = _read_varint(message, i)
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError("bad wire type")
    if i != len(message):
        raise ValueError("truncated message")
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


class GrpcProbe:
    """grpc.health.v1.Health/Check over HTTP/2 (grpcio, bytes in and out), on a channel of
    its own (a local subchannel pool: one connection per host, as Envoy's per-session client)."""

    def __init__(self, checker: HealthChecker, address: str, port: int,
                 config: model.GrpcHealthCheck, reuse: bool) -> None:
        self.checker = checker
        self.target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.authority = config.authority or checker.name
        self.request = encode_request(config.service_name)
        # Added in order: the call's own headers are not among them (the translator says so).
        self.metadata = tuple((o.name, o.value) for o in config.initial_metadata
                              if o.value or o.keep_empty_value) or None
        self.reuse = reuse
        self.channel: Any = None

    async def check(self) -> Outcome:
        import grpc      # grpcio loads only for clusters that use gRPC health checks

        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=[
                ("grpc.default_authority", self.authority),
                ("grpc.primary_user_agent", USER_AGENT),
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.enable_retries", 0),
            ])
        call = self.channel.unary_unary(HEALTH_CHECK_METHOD)
        try:
            response = await call(self.request, metadata=self.metadata)
            outcome = Outcome.SUCCESS if decode_status(response) == SERVING else Outcome.FAILED
        except grpc.aio.AioRpcError as e:
            text = f"{e.details()} {e.debug_error_string()}".lower()
            transport = (e.code() is grpc.StatusCode.UNAVAILABLE
                         and any(marker in text for marker in _TRANSPORT_ERRORS))
            # A fresh channel next time: grpcio's reconnect backoff would otherwise fail
            # the next checks without trying (Envoy reconnects on the next interval).
            self.close()
            return Outcome.NETWORK if transport else Outcome.FAILED
        except ValueError:
            outcome = Outcome.FAILED        # an undecodable HealthCheckResponse
        if not self.reuse:
            self.close()
        return outcome

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            self.checker.spawn(channel.close())
