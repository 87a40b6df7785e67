"""The fault filter's decisions, driven directly with a chosen random source (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from config import model
from filters.api import LocalReply
from filters.http.fault.factory import AbortFault, DelayFault, FaultConfig, Percent
from filters.http.fault.filter import FaultFilter, parse_uint
from sidecar.http.message import Request, Response
from sidecar.http.responding import local_response
from sidecar.stats import FaultStats, StatsStore

ALWAYS = Percent(100, 100)
HALF = Percent(50, 100)


class Route:
    """What the filter reads of the selected route."""

    def __init__(self, per_filter_config: dict[str, Any]) -> None:
        self.per_filter_config = per_filter_config


def make_request(headers: dict[str, str] | None = None, route: Any = None,
                 path: str = "/") -> Request:
    request = Request("GET", path, "example.com", "http", list((headers or {}).items()), None)
    request.route = route
    return request


class Chain:
    """The rest of the chain: counts the requests that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: Request) -> Response:
        self.calls += 1
        return Response(200, [], b"upstream")


def make_filter(config: FaultConfig, draws: Callable[[int], int] | None = None,
                name: str = "envoy.filters.http.fault") -> FaultFilter:
    return FaultFilter(config, name, FaultStats("web"), draws or (lambda n: 0))


def run(fault: FaultFilter, request: Request, chain: Chain | None = None) -> Response | LocalReply:
    async def go() -> Response | LocalReply:
        try:
            return await fault(request, chain or Chain())
        except LocalReply as reply:
            return reply
    return asyncio.run(go())


def abort_config(status: int | None = 503, percent: Percent = ALWAYS, grpc: int | None = None,
                 **kw: Any) -> FaultConfig:
    return FaultConfig(abort=AbortFault(status, grpc, False, percent), **kw)


def test_abort_is_a_local_reply_with_envoys_body_flag_and_details():
    fault = make_filter(abort_config(503))
    chain = Chain()
    request = make_request()
    reply = run(fault, request, chain)
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.flag, reply.details) == (
        503, b"fault filter abort", "FI", "fault_filter_abort")
    assert chain.calls == 0
    assert (fault.stats.aborts_injected, fault.stats.active_faults) == (1, 0)


def test_percentage_is_drawn_against_the_denominator():
    draws: list[int] = []

    def draw(n: int) -> int:
        draws.append(n)
        return 49
    assert isinstance(run(make_filter(abort_config(percent=HALF), draw), make_request()), LocalReply)
    assert draws == [100]
    miss = make_filter(abort_config(percent=Percent(50, 10_000)), lambda n: 50)
    assert isinstance(run(miss, make_request()), Response)
    # numerator >= denominator: always, without a draw

    def no_draw(n: int) -> int:
        raise AssertionError("drew")
    always = make_filter(abort_config(percent=Percent(300, 100)), no_draw)
    assert isinstance(run(always, make_request()), LocalReply)


def test_zero_percent_never_injects():
    fault = make_filter(abort_config(percent=Percent(0, 100)))
    assert isinstance(run(fault, make_request()), Response)
    assert fault.stats.aborts_injected == 0


def test_delay_then_continue_sets_di_and_releases_the_active_fault():
    fault = make_filter(FaultConfig(delay=DelayFault(30, ALWAYS)))
    request = make_request()
    chain = Chain()
    seen_active: list[int] = []

    async def next_(r: Request) -> Response:
        seen_active.append(fault.stats.active_faults)
        return await chain(r)

    async def go() -> tuple[Response, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        response = await fault(request, next_)
        return response, loop.time() - start
    response, elapsed = asyncio.run(go())
    assert response.status == 200 and elapsed >= 0.029
    assert request.info.response_flags == ["DI"]
    assert seen_active == [0]             # no longer active once the delay is over (as Envoy)
    assert (fault.stats.delays_injected, fault.stats.active_faults) == (1, 0)


def test_delay_then_abort_draws_the_abort_after_the_delay():
    config = FaultConfig(delay=DelayFault(10, ALWAYS), abort=AbortFault(500, None, False, ALWAYS))
    fault = make_filter(config)
    request = make_request()
    reply = run(fault, request)
    assert isinstance(reply, LocalReply) and reply.status == 500
    assert request.info.response_flags == ["DI"]      # FI is the connection manager's, from reply.flag
    assert (fault.stats.delays_injected, fault.stats.aborts_injected) == (1, 1)
    assert fault.stats.active_faults == 0


def test_zero_ms_delay_is_no_delay():
    fault = make_filter(FaultConfig(delay=DelayFault(0, ALWAYS)))
    request = make_request()
    assert isinstance(run(fault, request), Response)
    assert request.info.response_flags == [] and fault.stats.delays_injected == 0


HEADER_FAULTS = FaultConfig(delay=DelayFault(None, Percent(50, 100)),
                            abort=AbortFault(None, None, True, Percent(50, 100)))


@pytest.mark.parametrize("headers,expected", [
    ({}, 200),
    ({"x-envoy-fault-abort-request": "418"}, 418),
    ({"x-envoy-fault-abort-request": " +429 "}, 429),       # absl::SimpleAtoi's leniency
    ({"x-envoy-fault-abort-request": "600"}, 200),          # outside [200, 600): ignored
    ({"x-envoy-fault-abort-request": "199"}, 200),
    ({"x-envoy-fault-abort-request": "5e2"}, 200),
    ({"x-envoy-fault-abort-request": "-500"}, 200),
    ({"x-envoy-fault-abort-request": "500", "x-envoy-fault-abort-grpc-request": "14"}, 500),
    ({"x-envoy-fault-abort-grpc-request": "14"}, 200),      # plain HTTP: 200 with the text body
])
def test_header_controlled_abort(headers, expected):
    # a draw of 10 is under the configured 50%
    fault = make_filter(HEADER_FAULTS, lambda n: 10)
    outcome = run(fault, make_request(headers))
    assert outcome.status == expected
    if "x-envoy-fault-abort-grpc-request" in headers and expected == 200:
        assert isinstance(outcome, LocalReply) and outcome.body == b"fault filter abort"


@pytest.mark.parametrize("percentage,injected", [
    ("10", True),    # 10 > draw 5
    ("5", False),    # 5 > 5 is false
    ("90", True),    # capped at the configured 50, still > 5
    ("bad", True),   # unparsable: the configured 50
    ("0", False),
])
def test_percentage_header_only_lowers_the_configured_numerator(percentage, injected):
    fault = make_filter(HEADER_FAULTS, lambda n: 5)
    outcome = run(fault, make_request({"x-envoy-fault-abort-request": "503",
                                       "x-envoy-fault-abort-request-percentage": percentage}))
    assert (outcome.status == 503) is injected
    capped = make_filter(HEADER_FAULTS, lambda n: 60)   # above the configured 50
    assert run(capped, make_request({"x-envoy-fault-abort-request": "503",
                                     "x-envoy-fault-abort-request-percentage": "100"})).status == 200


def test_header_delay_uses_the_header_value_in_ms():
    fault = make_filter(HEADER_FAULTS, lambda n: 0)
    request = make_request({"x-envoy-fault-delay-request": "20"})
    assert run(fault, request).status == 200
    assert request.info.response_flags == ["DI"] and fault.stats.delays_injected == 1
    for value in ("0", "abc", "1e2", "-5"):
        request = make_request({"x-envoy-fault-delay-request": value})
        assert run(fault, request).status == 200 and request.info.response_flags == []
    assert fault.stats.delays_injected == 1


@pytest.mark.parametrize("content_type,grpc", [
    ("application/grpc", True), ("application/grpc+proto", True), ("application/grpc;x=1", True),
    ("application/grpc-web", False), ("Application/GRPC", False), (None, False),
])
def test_grpc_requests_get_a_grpc_local_reply(content_type, grpc):
    headers = {"content-type": content_type} if content_type else {}
    request = make_request(headers)
    outcome = run(make_filter(abort_config(None, grpc=5)), request)
    assert isinstance(outcome, LocalReply) and outcome.grpc_status == 5
    response = local_response(request, outcome)         # as the connection manager answers
    assert response.status == 200
    if grpc:
        assert response.body == b""
        assert response.headers == [("content-type", "application/grpc"), ("grpc-status", "5"),
                                    ("grpc-message", "fault filter abort")]
    else:
        assert response.body == b"fault filter abort"


@pytest.mark.parametrize("status,grpc_status", [(503, "14"), (404, "12"), (400, "13"), (418, "2")])
def test_http_abort_of_a_grpc_request_maps_the_status(status, grpc_status):
    request = make_request({"content-type": "application/grpc"})
    outcome = run(make_filter(abort_config(status)), request)
    assert isinstance(outcome, LocalReply) and outcome.status == status
    response = local_response(request, outcome)
    assert response.status == 200 and ("grpc-status", grpc_status) in response.headers


def test_headers_and_downstream_nodes_limit_the_fault():
    from config.matchers import StringMatcher
    matcher = model.HeaderMatcher("x-fault", string=StringMatcher("exact", "yes"))
    fault = make_filter(abort_config(headers=(matcher,), downstream_nodes=frozenset({"n1"})))
    assert run(fault, make_request({"x-fault": "yes"})).status == 200
    assert run(fault, make_request({"x-envoy-downstream-service-node": "n1"})).status == 200
    assert run(fault, make_request({"x-fault": "yes",
                                    "x-envoy-downstream-service-node": "n1"})).status == 503
    path_matcher = model.HeaderMatcher(":path", string=StringMatcher("prefix", "/fault"))
    by_path = make_filter(abort_config(headers=(path_matcher,)))
    assert run(by_path, make_request(path="/fault/x")).status == 503
    assert run(by_path, make_request(path="/other")).status == 200


def test_per_route_config_replaces_the_filter_config_by_the_filters_chain_name():
    fault = make_filter(abort_config(503), name="my-fault")
    assert run(fault, make_request(route=Route({"my-fault": abort_config(502)}))).status == 502
    assert run(fault, make_request(route=Route({"my-fault": abort_config(percent=Percent(0))}))
               ).status == 200
    assert run(fault, make_request(route=Route({"my-fault": model.FILTER_DISABLED}))).status == 200
    # another name (even the extension's own) is not this filter's config
    assert run(fault, make_request(route=Route({"envoy.filters.http.fault": abort_config(502)}))
               ).status == 503
    assert run(fault, make_request(route=None)).status == 503
    # a config of another type under this name is not the fault filter's
    assert run(fault, make_request(route=Route({"my-fault": object()}))).status == 503


def test_max_active_faults_overflow_lets_the_request_through_uninjected():
    config = FaultConfig(delay=DelayFault(50, ALWAYS), abort=None, max_active_faults=1)
    fault = make_filter(config)
    first, second = make_request(), make_request()

    async def go() -> tuple[Response, Response, float]:
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(fault(first, Chain()))
        await asyncio.sleep(0.01)
        assert fault.stats.active_faults == 1
        start = loop.time()
        fast = await fault(second, Chain())
        elapsed = loop.time() - start
        return await slow, fast, elapsed
    slow, fast, elapsed = asyncio.run(go())
    assert slow.status == fast.status == 200 and elapsed < 0.04
    assert first.info.response_flags == ["DI"] and second.info.response_flags == []
    stats = fault.stats
    assert (stats.delays_injected, stats.faults_overflow, stats.active_faults) == (1, 1, 0)


def test_overflow_checks_each_fault_it_tries():
    # Envoy checks the limit for the delay and again for the abort: two overflows.
    config = FaultConfig(delay=DelayFault(10, ALWAYS), abort=AbortFault(503, None, False, ALWAYS),
                         max_active_faults=0)
    fault = make_filter(config)
    assert run(fault, make_request()).status == 200
    assert fault.stats.faults_overflow == 2 and fault.stats.active_faults == 0


def test_a_cancelled_delay_releases_the_active_fault():
    fault = make_filter(FaultConfig(delay=DelayFault(10_000, ALWAYS)))

    async def go() -> None:
        task = asyncio.create_task(fault(make_request(), Chain()))
        await asyncio.sleep(0.01)
        assert fault.stats.active_faults == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(go())
    assert fault.stats.active_faults == 0 and fault.stats.delays_injected == 1


def test_stats_live_under_the_connection_managers_prefix():
    store = StatsStore()
    http = store.http_scope("ingress")
    assert http.filter_scope(FaultStats) is http.filter_scope(FaultStats)
    http.filter_scope(FaultStats).delays_injected += 2
    dotted = dict((name, value) for name, value, _ in store.dotted())
    assert dotted["http.ingress.fault.delays_injected"] == 2
    assert dotted["http.ingress.fault.active_faults"] == 0
    assert dotted["http.ingress.downstream_rq_total"] == 0
    text = store.prometheus_text()
    assert 'envoy_http_fault_delays_injected{envoy_http_conn_manager_prefix="ingress"} 2' in text
    assert "# TYPE envoy_http_fault_active_faults gauge" in text


def test_parse_uint_is_absl_simple_atoi():
    assert parse_uint("42", 100) == 42
    assert parse_uint(" +7\t", 100) == 7
    assert parse_uint("101", 100) is None
    for bad in ("", "+", "-1", "1.5", "0x10", "٣", None):
        assert parse_uint(bad, 100) is None
