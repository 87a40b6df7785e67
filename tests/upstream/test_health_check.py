"""Active health checks, unit level: translation and Envoy's validation, the session state machine
(thresholds, first check, active / retriable / network / passive failures, degraded), the interval
choice and jitter, timeouts, host set changes and the wiring into ClusterRuntime.  Timers run on a
fake clock and the probes are scripted: no sleeps, no sockets."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from config import model
from sidecar.stats import ClusterStats, StatsStore
from sidecar.upstream.cluster import ClusterManager, ClusterRuntime
from sidecar.upstream.health_check import HealthChecker, Outcome, update_hosts
from sidecar.upstream.health_probes import (decode_status, encode_request, http_request, in_ranges,
                                            payload_match)
from sidecar.upstream.host import (ACTIVE_HC_TIMEOUT, DEGRADED_ACTIVE_HC,
                                   EXCLUDED_VIA_IMMEDIATE_HC_FAIL, FAILED_ACTIVE_HC,
                                   FAILED_OUTLIER_CHECK, Host)
from tests.config.test_translate import basic, errors_of, translate

# --- translation ------------------------------------------------------------------------

BASE = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 3, "healthy_threshold": 2,
        "http_health_check": {"path": "/healthz"}}


def with_checks(*checks: dict, **cluster: Any) -> dict:
    config = basic()
    config["static_resources"]["clusters"][0].update(health_checks=list(checks), **cluster)
    return config


def test_unset_intervals_fall_back_as_envoys():
    hc = translate(with_checks(BASE)).clusters[0].health_check
    assert hc is not None and hc.http is not None
    assert (hc.timeout, hc.interval, hc.unhealthy_threshold, hc.healthy_threshold) == (1.0, 2.0, 3, 2)
    assert (hc.no_traffic_interval, hc.no_traffic_healthy_interval) == (60.0, 60.0)
    assert (hc.unhealthy_interval, hc.unhealthy_edge_interval, hc.healthy_edge_interval) == (2.0, 2.0, 2.0)
    assert hc.reuse_connection is True and hc.initial_jitter == 0.0
    assert hc.http == model.HttpHealthCheck(path="/healthz")
    assert hc.http.expected_statuses == ((200, 201),)
    assert translate(basic()).clusters[0].health_check is None


def test_fields_translate():
    hc = translate(with_checks({
        **BASE, "no_traffic_interval": "5s", "unhealthy_interval": "0.5s", "initial_jitter": "0.25s",
        "interval_jitter": "0.1s", "interval_jitter_percent": 10, "reuse_connection": False,
        "healthy_edge_interval": "0.3s", "always_log_health_check_failures": True,
        "http_health_check": {
            "path": "/h", "host": "svc", "request_headers_to_remove": ["X-Gone"],
            "request_headers_to_add": [{"header": {"key": "X-A", "value": "1"},
                                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
            "expected_statuses": [{"start": 200, "end": 300}],
            "retriable_statuses": [{"start": 429, "end": 430}]}})).clusters[0].health_check
    assert hc is not None and hc.http is not None
    assert (hc.no_traffic_interval, hc.no_traffic_healthy_interval) == (5.0, 5.0)
    assert (hc.unhealthy_interval, hc.unhealthy_edge_interval, hc.healthy_edge_interval) == (0.5, 0.5, 0.3)
    assert (hc.initial_jitter, hc.interval_jitter, hc.interval_jitter_percent) == (0.25, 0.1, 10)
    assert hc.reuse_connection is False and hc.always_log_health_check_failures
    assert hc.http.host == "svc" and hc.http.headers_to_remove == ("x-gone",)
    assert hc.http.headers_to_add == (model.HeaderValueOption("x-a", "1", "OVERWRITE_IF_EXISTS_OR_ADD"),)
    assert hc.http.expected_statuses == ((200, 300),) and hc.http.retriable_statuses == ((429, 430),)


def test_http_method_and_payloads():
    hc = translate(with_checks({**BASE, "http_health_check": {
        "path": "/h", "method": "POST", "send": {"text": "6869"}, "receive": [{"binary": "b2s="}],
        "response_buffer_size": 0}})).clusters[0].health_check
    assert hc is not None and hc.http is not None
    assert (hc.http.method, hc.http.send, hc.http.receive, hc.http.response_buffer_size) == (
        "POST", b"hi", (b"ok",), 0)
    assert translate(with_checks(BASE)).clusters[0].health_check.http.response_buffer_size == 1024


def test_tcp_payloads_hex_and_binary():
    check = {k: v for k, v in BASE.items() if k != "http_health_check"}
    hc = translate(with_checks({**check, "tcp_health_check": {
        "send": {"text": "70696E67"}, "receive": [{"binary": "cG8="}, {"text": "6e67"}]}})
    ).clusters[0].health_check
    assert hc is not None and hc.tcp == model.TcpHealthCheck(b"ping", (b"po", b"ng"))


PATH = "static_resources.clusters[0].health_checks[0]"


@pytest.mark.parametrize("change, path, message", [
    ({"timeout": None}, f"{PATH}.timeout", "value is required"),
    ({"interval": None}, f"{PATH}.interval", "value is required"),
    ({"unhealthy_threshold": None}, f"{PATH}.unhealthy_threshold", "value is required"),
    ({"healthy_threshold": None}, f"{PATH}.healthy_threshold", "value is required"),
    ({"interval": "0s"}, f"{PATH}.interval", "value must be greater than 0s"),
    ({"no_traffic_interval": "0s"}, f"{PATH}.no_traffic_interval", "value must be greater than 0s"),
    ({"http_health_check": None}, PATH, "health_checker is required"),
    ({"http_health_check": {}}, f"{PATH}.http_health_check.path", "at least 1 characters"),
    ({"alt_port": 8080}, f"{PATH}.alt_port", "not supported"),
    ({"event_log_path": "/tmp/x"}, f"{PATH}.event_log_path", "not supported"),
    ({"http_health_check": {"path": "/", "codec_client_type": "HTTP2"}},
     f"{PATH}.http_health_check.codec_client_type", "only HTTP1"),
    ({"http_health_check": {"path": "/", "method": "CONNECT"}},
     f"{PATH}.http_health_check.method", "value must not be in list [CONNECT]"),
    ({"http_health_check": {"path": "/", "send": {"text": "6869"}}},
     f"{PATH}.http_health_check.send", "cannot specify a request payload with method 'GET'"),
    ({"http_health_check": {"path": "/", "method": "HEAD", "send": {"text": "6869"}}},
     f"{PATH}.http_health_check.send", "cannot specify a request payload with method 'HEAD'"),
    ({"http_health_check": {"path": "/", "service_name_matcher": {"exact": "x"}}},
     f"{PATH}.http_health_check.service_name_matcher", "not supported"),
    ({"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 200}]}},
     f"{PATH}.http_health_check.expected_statuses[0]", "expecting start < end"),
    ({"http_health_check": {"path": "/", "retriable_statuses": [{"start": 99, "end": 200}]}},
     f"{PATH}.http_health_check.retriable_statuses[0]", "expecting start >= 100"),
    ({"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 601}]}},
     f"{PATH}.http_health_check.expected_statuses[0]", "expecting end <= 600"),
    ({"http_health_check": {"path": "/", "request_headers_to_remove": ["host"]}},
     f"{PATH}.http_health_check.request_headers_to_remove[0]", "may not be removed"),
    ({"http_health_check": {"path": "/", "request_headers_to_add": [
        {"header": {"key": "host", "value": "x"}}]}},
     f"{PATH}.http_health_check.request_headers_to_add[0].header.key", "may not be modified"),
    ({"http_health_check": {"path": "/", "request_headers_to_add": [
        {"header": {"key": "x-a", "value": "%UPSTREAM_REMOTE_ADDRESS%"}}]}},
     f"{PATH}.http_health_check.request_headers_to_add[0].header.value", "formatters"),
    ({"http_health_check": None, "tcp_health_check": {"send": {"text": "zz"}}},
     f"{PATH}.tcp_health_check.send.text", "invalid hex string 'zz'"),
    ({"http_health_check": None, "tcp_health_check": {"receive": [{"text": "abc"}]}},
     f"{PATH}.tcp_health_check.receive[0].text", "invalid hex string 'abc'"),
    ({"http_health_check": None, "tcp_health_check": {"proxy_protocol_config": {}}},
     f"{PATH}.tcp_health_check.proxy_protocol_config", "not supported"),
    ({"http_health_check": None, "grpc_health_check": {}},
     f"{PATH}.grpc_health_check", "backend cluster must support HTTP/2 for gRPC healthchecking"),
    ({"http_health_check": None, "grpc_health_check": {"initial_metadata": [
        {"header": {"key": "user-agent", "value": "b"}}]}},
     f"{PATH}.grpc_health_check.initial_metadata[0].header.key", "not supported"),
    ({"http_health_check": None, "grpc_health_check": {"initial_metadata": [
        {"header": {"key": ":path", "value": "b"}}]}},
     f"{PATH}.grpc_health_check.initial_metadata[0].header.key", "may not be modified"),
])
def test_rejections_name_their_path(change, path, message):
    check = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    errors = errors_of(with_checks(check))
    assert any(e.startswith(path + ":") and message in e for e in errors), errors


def test_one_health_check_per_cluster():
    errors = errors_of(with_checks(BASE, BASE))
    assert any(e.startswith("static_resources.clusters[0].health_checks[1]:") for e in errors)


def test_grpc_check_on_an_http2_cluster():
    check = {**{k: v for k, v in BASE.items() if k != "http_health_check"},
             "grpc_health_check": {"service_name": "svc", "authority": "a.b"}}
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    hc = translate(with_checks(check, typed_extension_protocol_options={key: {
        "@type": "type.googleapis.com/" + key,
        "explicit_http_config": {"http2_protocol_options": {}}}})).clusters[0].health_check
    assert hc is not None and hc.grpc == model.GrpcHealthCheck("svc", "a.b")


# --- the state machine on a fake clock ---------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[float]:
        return sorted(t.when - self.now for t in self.timers if not t.cancelled)

    def fire_next(self) -> float:
        """Run the earliest live timer; returns its delay from the previous now."""
        live = [t for t in self.timers if not t.cancelled]
        timer = min(live, key=lambda t: t.when)
        self.timers.remove(timer)
        delay = timer.when - self.now
        self.now = timer.when
        timer.callback()
        return delay


class FakeTimer:
    def __init__(self, when: float, callback) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedProbe:
    """Answers each check with the next outcome of the shared script for its host
    (None: never answers, for timeouts)."""

    def __init__(self, script: list[Outcome | None]) -> None:
        self.script = script
        self.resets = 0
        self.closed = False

    async def check(self) -> Outcome:
        outcome = self.script.pop(0)
        if outcome is None:
            await asyncio.Event().wait()
        assert outcome is not None
        return outcome

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True


class FakeCluster:
    def __init__(self, name: str = "c") -> None:
        self.name = name
        self.stats = ClusterStats(name)
        self.changes = 0
        self.initialized = asyncio.Event()

    def health_changed(self) -> None:
        self.changes += 1


def make(config: model.HealthCheck, scripts: dict[int, list[Outcome | None]],
         ports: tuple[int, ...] = (1,), rng: random.Random | None = None):
    """A started checker over hosts 127.0.0.1:<port>, each probe following scripts[port]."""
    cluster = FakeCluster()
    clock = FakeClock()
    probes: dict[int, ScriptedProbe] = {}

    def probe_factory(session):
        probes[session.key[1]] = ScriptedProbe(scripts[session.key[1]])
        return probes[session.key[1]]

    checker = HealthChecker(cluster, config, call_later=clock.call_later, probe_factory=probe_factory,
                            rng=rng or random.Random(1))
    hosts = [Host("127.0.0.1", p) for p in ports]
    checker.hosts_changed(hosts)
    return SimpleNamespace(cluster=cluster, clock=clock, checker=checker, hosts=hosts,
                           probes=probes, stats=checker.stats)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def step(t) -> float:
    """Fire the next timer (an interval: a check starts) and let the check complete."""
    delay = t.clock.fire_next()
    await settle()
    return delay


def config(**kw: Any) -> model.HealthCheck:
    base: dict[str, Any] = dict(timeout=1.0, interval=2.0, unhealthy_threshold=3,
                                healthy_threshold=2, http=model.HttpHealthCheck("/"),
                                no_traffic_interval=60.0, no_traffic_healthy_interval=60.0,
                                unhealthy_interval=2.0, unhealthy_edge_interval=2.0,
                                healthy_edge_interval=2.0)
    base.update(kw)
    return model.HealthCheck(**base)


def test_hosts_start_failed_and_the_first_success_makes_them_healthy_at_once():
    async def run():
        t = make(config(), {1: [Outcome.SUCCESS], 2: [Outcome.NETWORK]}, ports=(1, 2))
        a, b = t.hosts
        assert a.failed & FAILED_ACTIVE_HC and b.failed & FAILED_ACTIVE_HC
        assert not a.healthy and t.stats.healthy == 0
        t.checker.start()              # initial_jitter 0: both check now
        assert t.stats.attempt == 2
        await settle()
        assert a.healthy and not b.healthy     # b's first check failed: stays failed
        assert (t.stats.success, t.stats.failure, t.stats.network_failure) == (1, 1, 1)
        assert t.stats.healthy == 1
        assert t.cluster.changes == 1          # only a changed
    asyncio.run(run())


def test_initialized_after_as_many_results_as_hosts():
    async def run():
        t = make(config(), {1: [Outcome.SUCCESS, Outcome.SUCCESS], 2: [None], 3: [None]},
                 ports=(1, 2, 3))
        t.checker.start()
        await settle()
        assert not t.cluster.initialized.is_set()      # 1 result of 3
        await step(t)                                  # 2's timeout (1 s): 2 results
        assert not t.cluster.initialized.is_set()
        t.checker.hosts_changed(t.hosts[:2])           # 3 goes before its first check: 3
        assert t.cluster.initialized.is_set()
        empty = make(config(), {}, ports=())
        empty.checker.start()
        assert empty.cluster.initialized.is_set()     # no hosts: nothing to wait for
        # STRICT_DNS: the hosts come after start (the first resolution); the round waits.
        cluster, clock = FakeCluster(), FakeClock()
        later = HealthChecker(cluster, config(), call_later=clock.call_later,
                              probe_factory=lambda s: ScriptedProbe([Outcome.SUCCESS]))
        later.start()
        assert not cluster.initialized.is_set()
        later.hosts_changed([Host("127.0.0.1", 9)])
        assert not cluster.initialized.is_set() and later.stats.attempt == 1
        await settle()
        assert cluster.initialized.is_set()
    asyncio.run(run())


def test_timeout_is_a_network_failure_and_marks_a_failed_host():
    async def run():
        t = make(config(unhealthy_threshold=1), {1: [Outcome.SUCCESS, None, Outcome.FAILED,
                                                     Outcome.SUCCESS]})
        t.cluster.stats.upstream_cx_total = 1
        host = t.hosts[0]
        t.checker.start()
        await settle()
        assert t.clock.pending() == [2.0]
        await step(t)                          # the check hangs: timeout armed (1 s)
        assert t.clock.pending() == [1.0] and t.stats.attempt == 2
        t.clock.fire_next()
        await settle()
        assert t.stats.network_failure == 1 and t.probes[1].resets == 1
        assert host.failed == FAILED_ACTIVE_HC | ACTIVE_HC_TIMEOUT      # /active_hc_timeout
        await step(t)                          # another failure: the mark goes
        assert host.failed == FAILED_ACTIVE_HC
        await step(t)                          # (healthy_threshold 2: still failed)
        assert t.clock.pending() == [2.0]
    asyncio.run(run())


def test_network_failures_count_to_unhealthy_threshold_with_edge_intervals():
    async def run():
        cfg = config(unhealthy_edge_interval=0.5, unhealthy_interval=4.0, interval=2.0)
        t = make(cfg, {1: [Outcome.SUCCESS, Outcome.NETWORK, Outcome.TIMEOUT, Outcome.SUCCESS,
                           Outcome.NETWORK, Outcome.NETWORK, Outcome.NETWORK, Outcome.NETWORK]})
        t.cluster.stats.upstream_cx_total = 1          # the cluster carried traffic
        host = t.hosts[0]
        t.checker.start()
        await settle()
        assert host.healthy and t.clock.pending() == [2.0]
        await step(t)                                  # network failure 1 of 3: pending
        assert host.healthy and t.clock.pending() == [0.5]
        await step(t)                                  # failure 2 (a timeout result counts too)
        assert host.healthy
        await step(t)                                  # a success resets the count
        assert t.clock.pending() == [2.0]
        for _ in range(2):
            await step(t)
        assert host.healthy
        await step(t)                                  # 3 in a row: out
        assert not host.healthy and t.clock.pending() == [4.0]
        assert t.stats.healthy == 0 and t.stats.network_failure == 5
        await step(t)                                  # still failing: unhealthy_interval
        assert t.clock.pending() == [4.0]
    asyncio.run(run())


def test_active_failure_ejects_at_once_retriable_counts():
    async def run():
        t = make(config(unhealthy_threshold=2),
                 {1: [Outcome.SUCCESS, Outcome.RETRIABLE, Outcome.SUCCESS, Outcome.FAILED],
                  2: [Outcome.SUCCESS, Outcome.RETRIABLE, Outcome.RETRIABLE]}, ports=(1, 2))
        a, b = t.hosts
        t.checker.start()
        await settle()
        await step(t)
        await step(t)                                  # both: one retriable failure
        assert a.healthy and b.healthy
        await step(t)
        await step(t)                                  # a passes, b's second retriable: out
        assert a.healthy and not b.healthy
        await step(t)                                  # a: an unexpected status, out at once
        assert not a.healthy
        assert t.stats.network_failure == 0 and t.stats.failure == 4
    asyncio.run(run())


def test_healthy_threshold_brings_a_host_back_with_healthy_edge_interval():
    async def run():
        cfg = config(healthy_threshold=3, healthy_edge_interval=0.25, unhealthy_interval=1.5)
        t = make(cfg, {1: [Outcome.SUCCESS, Outcome.FAILED, Outcome.SUCCESS, Outcome.SUCCESS,
                           Outcome.SUCCESS]})
        t.cluster.stats.upstream_cx_total = 1
        host = t.hosts[0]
        t.checker.start()
        await settle()
        await step(t)
        assert not host.healthy and t.clock.pending() == [1.5]
        await step(t)
        await step(t)
        assert not host.healthy and t.clock.pending() == [0.25]     # 2 of 3: pending
        await step(t)
        assert host.healthy and t.clock.pending() == [2.0]
        assert t.stats.healthy == 1 and t.cluster.changes == 3
    asyncio.run(run())


def test_no_traffic_intervals_until_the_cluster_carries_traffic():
    async def run():
        cfg = config(no_traffic_interval=7.0, no_traffic_healthy_interval=9.0)
        t = make(cfg, {1: [Outcome.SUCCESS, Outcome.NETWORK, Outcome.SUCCESS]})
        t.checker.start()
        await settle()
        assert t.clock.pending() == [9.0]      # healthy, no traffic
        await step(t)
        assert t.clock.pending() == [7.0]      # a pending change uses no_traffic_interval
        t.cluster.stats.upstream_cx_tx_bytes_total = 10
        await step(t)
        assert t.clock.pending() == [2.0]      # traffic seen: interval
    asyncio.run(run())


def test_jitter():
    async def run():
        cfg = config(interval=1.0, interval_jitter=0.1, interval_jitter_percent=50,
                     initial_jitter=0.2)
        t = make(cfg, {1: [Outcome.SUCCESS]})
        t.cluster.stats.upstream_cx_total = 1
        t.checker.start()
        assert t.stats.attempt == 0                    # waits a random part of initial_jitter
        (first,) = t.clock.pending()
        assert 0.001 <= first < 0.2
        await step(t)
        (delay,) = t.clock.pending()
        assert 1.0 <= delay < 1.0 + 0.5 + 0.1
        values = {t.checker.with_jitter(1.0, 0.1) for _ in range(50)}
        assert len(values) > 10 and all(1.0 <= v < 1.6 for v in values)
        assert t.checker.with_jitter(0, 0) == 0.001    # never 0 (Envoy: at least 1 ms)
    asyncio.run(run())


def test_fail_immediately_is_a_passive_failure():
    async def run():
        t = make(config(), {1: [Outcome.SUCCESS, Outcome.SUCCESS, Outcome.SUCCESS]})
        host = t.hosts[0]
        t.checker.start()
        await settle()
        assert host.healthy
        pending = t.clock.pending()
        host.health_checker.fail_immediately()
        assert not host.healthy
        assert host.failed == FAILED_ACTIVE_HC | EXCLUDED_VIA_IMMEDIATE_HC_FAIL
        assert (t.stats.failure, t.stats.passive_failure, t.stats.healthy) == (1, 1, 0)
        assert t.clock.pending() == pending            # the next check stays where it was
        await step(t)                                  # 1 of healthy_threshold 2
        assert not host.healthy and host.failed & EXCLUDED_VIA_IMMEDIATE_HC_FAIL
        new = Host("127.0.0.1", 1)                     # an EDS update keeps the marks
        t.checker.hosts_changed([new])
        assert new.failed == FAILED_ACTIVE_HC | EXCLUDED_VIA_IMMEDIATE_HC_FAIL
        await step(t)                                  # back: both flags cleared
        assert new.healthy and new.failed == 0
    asyncio.run(run())


def test_degraded_flag_and_envoys_gauge():
    async def run():
        t = make(config(), {1: [Outcome.DEGRADED, Outcome.SUCCESS, Outcome.DEGRADED]})
        host = t.hosts[0]
        t.checker.start()
        await settle()
        assert host.failed == DEGRADED_ACTIVE_HC and host.degraded and not host.healthy
        assert (t.stats.healthy, t.stats.degraded) == (1, 1)
        await step(t)
        assert host.healthy and t.cluster.changes == 2
        # Envoy 1.40 lowers the degraded gauge only when the session goes away.
        assert t.stats.degraded == 1
        await step(t)
        assert t.stats.degraded == 2
        t.checker.close()
        assert (t.stats.healthy, t.stats.degraded) == (0, 1)
    asyncio.run(run())


def test_host_set_changes_keep_sessions_by_address():
    async def run():
        t = make(config(), {1: [Outcome.SUCCESS, Outcome.SUCCESS], 2: [Outcome.SUCCESS],
                            3: [Outcome.SUCCESS]}, ports=(1, 2))
        t.checker.start()
        await settle()
        old_session = t.hosts[0].health_checker
        # An EDS update: new Host objects; 1 stays, 2 goes, 3 comes.
        new = [Host("127.0.0.1", 1, weight=5), Host("127.0.0.1", 3)]
        new[0].failed = FAILED_OUTLIER_CHECK
        t.checker.hosts_changed(new)
        assert new[0].health_checker is old_session
        assert new[0].failed == FAILED_OUTLIER_CHECK              # its own flags untouched
        assert t.probes[2].closed
        assert new[1].failed & FAILED_ACTIVE_HC
        assert t.stats.attempt == 3                                # 3's first check started
        await settle()
        assert not new[1].failed and t.stats.healthy == 2
        t.checker.close()
        assert t.probes[1].closed and t.probes[3].closed and t.stats.healthy == 0
        assert t.clock.pending() == []
    asyncio.run(run())


def test_a_new_checker_inherits_the_state_of_a_replaced_one():
    async def run():
        t = make(config(), {1: [Outcome.FAILED], 2: [Outcome.SUCCESS]}, ports=(1, 2))
        t.checker.start()
        await settle()
        t2 = make(config(), {1: [], 2: []}, ports=(1, 2))
        assert all(h.failed & FAILED_ACTIVE_HC for h in t2.hosts)
        t2.checker.stats.healthy = 0
        t2.checker.inherit(t.hosts)
        assert t2.hosts[0].failed & FAILED_ACTIVE_HC and t2.hosts[1].healthy
        # Handing the old Host objects over (an EDS cluster updated by CDS) does the same.
        t3 = make(config(), {}, ports=())
        t3.checker.hosts_changed(t.hosts)
        assert not t.hosts[0].healthy and t.hosts[1].healthy
        assert t.hosts[1].health_checker.checker is t3.checker
        update_hosts(None, t.hosts)                    # a cluster without checks takes them
        assert all(h.healthy and h.health_checker is None for h in t.hosts)
    asyncio.run(run())


def test_outlier_is_told_of_passing_checks():
    async def run():
        t = make(config(), {1: [Outcome.SUCCESS, Outcome.FAILED]})
        told = []
        t.hosts[0].outlier = SimpleNamespace(on_active_health_check_success=lambda: told.append(1))
        t.checker.start()
        await settle()
        await step(t)
        assert told == [1]
    asyncio.run(run())


# --- wiring into ClusterRuntime and ClusterManager ---------------------------------------

def endpoints(*ports: int) -> tuple[model.Endpoint, ...]:
    return tuple(model.Endpoint(model.SocketAddress("127.0.0.1", p)) for p in ports)


def test_cluster_runtime_hosts_start_failed_and_initialize_after_the_first_round():
    async def run():
        hc = config(tcp=model.TcpHealthCheck(), http=None)
        stats = ClusterStats("c")
        c = ClusterRuntime(model.Cluster("c", endpoints=endpoints(1, 2), health_check=hc), stats,
                           lambda: None)
        assert c.health_checker is not None and stats.health_check is not None
        assert all(h.failed & FAILED_ACTIVE_HC for h in c.hosts)
        assert stats.membership_healthy == 0 and not c.initialized.is_set()
        c.start()       # connects to closed ports 1 and 2: refused, failed first checks
        await asyncio.wait_for(c.initialized.wait(), 5)
        assert stats.health_check.network_failure == 2
        c.close()
        assert not c.health_checker.tasks or all(t.cancelled() or t.done()
                                                 for t in c.health_checker.tasks)
    asyncio.run(run())


def test_cluster_manager_replacement_stops_the_old_checker_and_carries_state():
    async def run():
        store = StatsStore()
        manager = ClusterManager(store, lambda: None)
        hc = config(tcp=model.TcpHealthCheck(), http=None, interval=30.0, no_traffic_interval=30.0)
        manager.put(model.Cluster("c", type="EDS", health_check=hc), endpoints(1))
        old = manager.get("c")
        for _ in range(100):
            if old.health_checker.stats.failure:
                break
            await asyncio.sleep(0.01)
        manager.put(model.Cluster("c", type="EDS", health_check=hc))      # CDS update
        new = manager.get("c")
        assert new is not old and old.health_checker.closed
        assert new.hosts[0].health_checker.checker is new.health_checker
        assert new.hosts[0].failed & FAILED_ACTIVE_HC                     # state carried
        assert store.cluster["c"].health_check is new.health_checker.stats
        names = {name for name, _, _ in store.dotted() if ".health_check." in name}
        assert "cluster.c.health_check.attempt" in names and "cluster.c.health_check.healthy" in names
        manager.put(model.Cluster("c", type="EDS"))                       # checks dropped
        assert manager.get("c").hosts[0].healthy
        manager.close()
    asyncio.run(run())


# --- probe helpers ---------------------------------------------------------------------

def test_http_request_headers_as_envoy():
    req = http_request(model.HttpHealthCheck("/h"), "web")
    assert (req.method, req.target) == (b"GET", b"/h")
    assert list(req.headers) == [(b"host", b"web"), (b"user-agent", b"Envoy/HC")]
    opts = model.HttpHealthCheck("/h", host="svc", headers_to_remove=("user-agent",), headers_to_add=(
        model.HeaderValueOption("x-a", "1"), model.HeaderValueOption("x-a", "2"),
        model.HeaderValueOption("x-b", "3", "OVERWRITE_IF_EXISTS"),
        model.HeaderValueOption("x-a", "4", "ADD_IF_ABSENT"),
        model.HeaderValueOption("host", "ignored?", "ADD_IF_ABSENT"),
        model.HeaderValueOption("x-c", "", "APPEND_IF_EXISTS_OR_ADD")))
    assert list(http_request(opts, "web").headers) == [(b"host", b"svc"), (b"x-a", b"1"), (b"x-a", b"2")]
    # Envoy's inline headers join appended values with ","; the others take a line each.
    opts = model.HttpHealthCheck("/h", headers_to_add=tuple(
        model.HeaderValueOption(name, value) for name in ("user-agent", "accept", "range")
        for value in ("v1", "v2")))
    assert list(http_request(opts, "web").headers) == [
        (b"host", b"web"), (b"user-agent", b"Envoy/HC,v1,v2"), (b"accept", b"v1,v2"),
        (b"range", b"v1"), (b"range", b"v2")]


def test_status_ranges_payloads_and_grpc_messages():
    assert in_ranges(204, ((200, 300),)) and not in_ranges(300, ((200, 300),))
    assert payload_match((b"po", b"ng"), b"xxpoyyngzz") and not payload_match((b"ng", b"po"), b"pong")
    assert payload_match((), b"")
    assert encode_request("") == b"" and encode_request("svc") == b"\x0a\x03svc"
    assert decode_status(b"") == 0 and decode_status(b"\x08\x01") == 1
    assert decode_status(b"\x12\x02ab\x08\x02") == 2           # an unknown field is skipped
    with pytest.raises(ValueError):
        decode_status(b"\x08")


def test_a_probe_error_is_a_network_failure():
    class Broken(ScriptedProbe):
        async def check(self) -> Outcome:
            raise RuntimeError("boom")

    async def run():
        cluster, clock = FakeCluster(), FakeClock()
        probe = Broken([])
        checker = HealthChecker(cluster, config(), call_later=clock.call_later,
                                probe_factory=lambda s: probe)
        checker.hosts_changed([Host("127.0.0.1", 9)])
        checker.start()
        await settle()
        assert checker.stats.network_failure == 1 and probe.resets == 1
        assert clock.pending() == [60.0]               # next check armed (no traffic yet)
    asyncio.run(run())
