"""The local rate limit filter side by side: the same bootstrap under sidecar and the real
Envoy 1.40, and every assertion must hold for both (the expectations are Envoy's)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.filters.filter_support import FILTER_CONFIG, KINDS, filter_listener, get, route
from tests.support.proxy import ProxyProcess, bootstrap, static_cluster
from tests.support.upstream import Upstream

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
NAME = "envoy.filters.http.local_ratelimit"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
BODY = b"local_rate_limited"
ALL = {"default_value": {"numerator": 100}, "runtime_key": "rl_enabled"}
NONE = {"default_value": {"numerator": 0}}


def lrl(prefix: str, max_tokens: int | None = 2, per_fill: int = 2, interval: str = "1s",
        enabled: dict | None = ALL, enforced: dict | None = ALL, **fields: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": LRL, "stat_prefix": prefix, **fields}
    if max_tokens is not None:
        config["token_bucket"] = {"max_tokens": max_tokens, "tokens_per_fill": per_fill,
                                  "fill_interval": interval}
    if enabled is not None:
        config["filter_enabled"] = enabled
    if enforced is not None:
        config["filter_enforced"] = enforced
    return config


def one(name: str, config: dict | None, **kw: Any) -> dict[str, Any]:
    return filter_listener(name, [(NAME, config)], **kw)


def lrl_config(port: int, logs: Path) -> dict:
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(logs / "basic.log"), "log_format": {"text_format":
            "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}]
    return bootstrap([
        one("basic", lrl("rl_basic", response_headers_to_add=[
            {"header": {"key": "x-limited", "value": "yes"}}]), access_log=access_log),
        one("refill", lrl("rl_refill", max_tokens=1, per_fill=1, interval="0.3s")),
        one("status", lrl("rl_status", max_tokens=1, interval="60s", status={"code": 503})),
        one("low-status", lrl("rl_low", max_tokens=1, interval="60s", status={"code": 302})),
        one("default-off", lrl("rl_off", max_tokens=1, enabled=None, enforced=None)),
        one("disabled", lrl("rl_disabled", max_tokens=1, enabled=NONE)),
        one("shadow", lrl("rl_shadow", max_tokens=1, interval="60s", enforced=None,
                          request_headers_to_add_when_not_enforced=[
                              {"header": {"key": "x-would-limit", "value": "1"}}])),
        one("no-bucket", lrl("rl_nobucket", max_tokens=None)),
        one("routes", {"@type": LRL, "stat_prefix": "rl_routes"}, routes=[
            route("/limited", typed_per_filter_config={
                NAME: lrl("rl_per_route", max_tokens=1, interval="60s")}),
            route("/off", typed_per_filter_config={
                NAME: {"@type": FILTER_CONFIG, "disabled": True}}),
            route("/")]),
        one("override", lrl("rl_filter", max_tokens=1, interval="60s"), routes=[
            route("/roomy", typed_per_filter_config={
                NAME: lrl("rl_roomy", max_tokens=5, interval="60s")}),
            route("/")]),
    ], [static_cluster("up", port)])


@pytest.fixture(scope="module", params=KINDS)
def proxy(request):
    with tempfile.TemporaryDirectory(prefix="lrl-logs-") as tmp, Upstream() as up:
        with ProxyProcess(lrl_config(up.port, Path(tmp)), kind=request.param,
                          extra_args=["--file-flush-interval-msec", "50"]) as p:
            p.upstream = up
            p.logs = Path(tmp)
            yield p


def statuses(proxy, listener: str, path: str, n: int, **kw: Any) -> list[int]:
    return [get(proxy, listener, path, **kw).status for _ in range(n)]


def lrl_stats(proxy, prefix: str) -> dict[str, int]:
    return {k.rsplit(".", 1)[1]: v for k, v in proxy.stats().items()
            if k.startswith(f"{prefix}.http_local_rate_limit.")}


def reached(proxy, path: str) -> int:
    return sum(1 for r in proxy.upstream.requests if r.target == path)


def log_lines(proxy, path: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        file = proxy.logs / "basic.log"
        lines = [l for l in file.read_text().splitlines() if l.split(" ")[0] == path] \
            if file.exists() else []
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_max_tokens_pass_then_429_with_envoys_reply(proxy):
    assert lrl_stats(proxy, "rl_basic") == {"enabled": 0, "enforced": 0, "ok": 0,
                                            "rate_limited": 0, "shadow_mode": 0}
    first = [get(proxy, "basic", "/b") for _ in range(2)]
    assert [r.status for r in first] == [200, 200]
    assert all(r.header("x-limited") is None for r in first)
    r = get(proxy, "basic", "/limited-b")
    assert r.status == 429
    assert r.body == BODY
    assert r.header("content-type") == "text/plain"
    assert r.header("x-limited") == "yes"
    assert r.header("x-envoy-ratelimited") is None
    assert r.header("x-ratelimit-limit") is None
    assert reached(proxy, "/limited-b") == 0
    assert log_lines(proxy, "/limited-b") == ["/limited-b 429 RL local_rate_limited"]
    assert lrl_stats(proxy, "rl_basic") == {"enabled": 3, "enforced": 1, "ok": 2,
                                            "rate_limited": 1, "shadow_mode": 0}


def test_tokens_refill_continuously(proxy):
    """Envoy 1.40's bucket refills continuously, not per fill_interval tick."""
    assert statuses(proxy, "refill", "/r", 2) == [200, 429]
    time.sleep(0.35)
    assert statuses(proxy, "refill", "/r", 2) == [200, 429]


def test_status_and_grpc(proxy):
    assert statuses(proxy, "status", "/s", 2) == [200, 503]
    r = get(proxy, "status", "/s", method="HEAD")
    assert (r.status, r.body, r.header("content-length")) == (503, b"", "18")
    g = get(proxy, "status", "/s", headers={"content-type": "application/grpc"})
    assert (g.status, g.header("grpc-status"), g.header("grpc-message")) == (
        200, "14", "local_rate_limited")
    assert statuses(proxy, "low-status", "/s", 2) == [200, 429]    # under 400: 429


@pytest.mark.parametrize("listener,prefix,enabled", [
    ("default-off", "rl_off", 0), ("disabled", "rl_disabled", 0), ("no-bucket", "rl_nobucket", 3)])
def test_not_enabled_or_no_bucket_passes(proxy, listener, prefix, enabled):
    assert statuses(proxy, listener, "/p", 3) == [200, 200, 200]
    assert lrl_stats(proxy, prefix) == {"enabled": enabled, "enforced": 0, "ok": enabled,
                                        "rate_limited": 0, "shadow_mode": 0}


def test_enabled_but_not_enforced_passes_counts_and_marks(proxy):
    assert statuses(proxy, "shadow", "/shadow", 3) == [200, 200, 200]
    marks = [r.header("x-would-limit") for r in proxy.upstream.requests if r.target == "/shadow"]
    assert marks == [None, "1", "1"]
    assert lrl_stats(proxy, "rl_shadow") == {"enabled": 3, "enforced": 0, "ok": 1,
                                             "rate_limited": 2, "shadow_mode": 0}


def test_per_route_config_has_its_own_bucket_and_stats(proxy):
    assert lrl_stats(proxy, "rl_roomy") == {"enabled": 0, "enforced": 0, "ok": 0,
                                            "rate_limited": 0, "shadow_mode": 0}
    assert statuses(proxy, "routes", "/limited", 3) == [200, 429, 429]
    assert statuses(proxy, "routes", "/other", 3) == [200, 200, 200]   # filter level: not enabled
    assert statuses(proxy, "routes", "/off", 3) == [200, 200, 200]
    assert lrl_stats(proxy, "rl_per_route") == {"enabled": 3, "enforced": 2, "ok": 1,
                                                "rate_limited": 2, "shadow_mode": 0}
    assert lrl_stats(proxy, "rl_routes")["enabled"] == 0
    assert statuses(proxy, "override", "/roomy", 3) == [200, 200, 200]
    assert statuses(proxy, "override", "/x", 2) == [200, 429]


def test_prometheus_names(proxy):
    get(proxy, "status", "/prom")
    _, text = proxy.admin("/stats/prometheus")
    assert "# TYPE envoy_http_local_rate_limit_enabled counter" in text
    assert 'envoy_http_local_rate_limit_enforced{envoy_local_http_ratelimit_prefix="rl_off"} 0' \
        in text
