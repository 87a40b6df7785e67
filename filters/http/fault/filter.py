"""The fault filter at run time: maybe delay the request, maybe answer it locally instead.

As Envoy's (source/extensions/filters/http/fault): per request, the most
specific per-route config replaces the filter's own; the request must match
``headers`` and ``downstream_nodes``; then a delay is drawn (its percentage,
then its duration), and after it, or without one, an abort.  Each fault
counts in ``http.<prefix>.fault.*``; ``active_faults`` counts requests with a
fault under way, and at ``max_active_faults`` no new fault starts
(``faults_overflow``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from config import model
from filters.api import Handler, LocalReply, Request, Response, request_config
from filters.http.common import Percent
from filters.http.fault.factory import AbortFault, DelayFault, FaultConfig
from sidecar.http.route_table import headers_match, route_cluster
from sidecar.stats import FaultStats

DELAY_HEADER = "x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = "x-envoy-fault-delay-request-percentage"
ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_GRPC_HEADER = "x-envoy-fault-abort-grpc-request"
ABORT_PERCENT_HEADER = "x-envoy-fault-abort-request-percentage"
NODE_HEADER = "x-envoy-downstream-service-node"

BODY = b"fault filter abort"
DETAILS = "fault_filter_abort"

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1



class FaultFilter:
    def __init__(self, config: FaultConfig, name: str, stats: FaultStats,
                 randrange: Callable[[int], int] = random.randrange) -> None:
        self.config = config
        self.name = name                  # the key of its typed_per_filter_config
        self.stats = stats
        self.randrange = randrange        # injectable for tests

    async def __call__(self, request: Request, next: Handler, /) -> Response:
        settings = request_config(request, self.name, self.config, FaultConfig)
        if settings is None:
            return await next(request)
        if settings.delay is None and settings.abort is None:
            return await next(request)
        if not self.matches(settings, request):
            return await next(request)
        stats = self.stats
        active = False      # this request holds one active_faults (Envoy counts one per stream)
        try:
            delay_ms = self.delay_ms(settings.delay, request)
            if delay_ms is not None and self.may_start(settings):
                active = True
                stats.delays_injected += 1
                request.info.set_flag("DI")
                await asyncio.sleep(delay_ms / 1000)
                # Delays can be followed by aborts: drawn after the delay, as Envoy.
                status = self.abort_status(settings.abort, request)
                if status is not None:
                    raise self.abort_reply(*status)
                # The delay is over: no longer an active fault.
                active = False
                stats.active_faults -= 1
                return await next(request)
            status = self.abort_status(settings.abort, request)
            if status is not None and self.may_start(settings):
                active = True
                raise self.abort_reply(*status)
            return await next(request)
        finally:
            if active:
                stats.active_faults -= 1

    @staticmethod
    def matches(settings: FaultConfig, request: Request) -> bool:
        nodes = settings.downstream_nodes
        if nodes and request.header(NODE_HEADER) not in nodes:
            return False
        if settings.upstream_cluster:
            entry = request.route
            if entry is None or type(entry.action) is not model.RouteAction:
                return False
            if route_cluster(request, entry.action)[0] != settings.upstream_cluster:
                return False
        return not settings.headers or headers_match(
            settings.headers, request.headers, request.authority, request.method, request.path,
            request.scheme)

    def may_start(self, settings: FaultConfig) -> bool:
        """Take one active fault, unless max_active_faults are under way (faults_overflow)."""
        stats = self.stats
        limit = settings.max_active_faults
        if limit is not None and stats.active_faults >= limit:
            stats.faults_overflow += 1
            return False
        stats.active_faults += 1
        return True

    def enabled(self, percent: Percent, request: Request, header: str | None) -> bool:
        """One draw against ``percent``; a percentage header can only lower its numerator."""
        numerator = percent.numerator
        if header is not None:
            value = parse_uint(request.header(header), UINT32_MAX)
            if value is not None:
                numerator = min(numerator, value)
        if numerator >= percent.denominator:
            return True
        return self.randrange(percent.denominator) < numerator

    def delay_ms(self, delay: DelayFault | None, request: Request) -> int | None:
        if delay is None:
            return None
        from_headers = delay.fixed_ms is None
        if not self.enabled(delay.percent, request, DELAY_PERCENT_HEADER if from_headers else None):
            return None
        ms = parse_uint(request.header(DELAY_HEADER), UINT64_MAX) if from_headers else delay.fixed_ms
        return ms if ms else None         # a 0 ms delay is none

    def abort_status(self, abort: AbortFault | None, request: Request
                     ) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None) of the abort to inject, or None."""
        if abort is None:
            return None
        if not abort.from_headers:
            if not self.enabled(abort.percent, request, None):
                return None
            if abort.http_status is not None:
                return abort.http_status, None
            return 200, abort.grpc_status
        if not self.enabled(abort.percent, request, ABORT_PERCENT_HEADER):
            return None
        code = parse_uint(request.header(ABORT_HEADER), UINT64_MAX)
        if code is not None and 200 <= code < 600:
            return code, None
        grpc = parse_uint(request.header(ABORT_GRPC_HEADER), UINT64_MAX)
        if grpc is not None:
            return 200, grpc
        return None

    def abort_reply(self, status: int, grpc_status: int | None) -> LocalReply:
        self.stats.aborts_injected += 1
        reply = LocalReply(status, BODY, "FI", DETAILS)
        # A gRPC request gets it gRPC-shaped (sidecar/http/responding.py), with this status.
        reply.grpc_status = grpc_status
        return reply


def parse_uint(value: str | None, limit: int) -> int | None:
    """An unsigned decimal as absl::SimpleAtoi reads it (surrounding whitespace and a
    leading + allowed), or None when absent, malformed or above ``limit``."""
    if value is None:
        return None
    text = value.strip(" \t\n\v\f\r")
    if text[:1] == "+":
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number <= limit else None
