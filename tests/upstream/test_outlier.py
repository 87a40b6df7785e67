"""Outlier detection, unit level (injected clock and RNG, no sleeps): translation and
defaults, each detection kind, enforcing percentages, max_ejection_percent and
always_eject_one_host, ejection time growth / decay / cap / jitter, un-ejection, the
local-origin split on and off, host set changes, and the wiring into ClusterRuntime."""

from __future__ import annotations

import asyncio

import pytest

from config import model
from sidecar.stats import ClusterStats, OutlierDetectionStats, StatsStore
from sidecar.upstream.cluster import ClusterManager, ClusterRuntime
from sidecar.upstream.host import FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK, Host
from sidecar.upstream.outlier import OutlierDetector
from tests.config.test_translate import basic, errors_of, translate


# --- translation ------------------------------------------------------------------------

def with_outlier(od: dict) -> dict:
    config = basic()
    config["static_resources"]["clusters"][0]["outlier_detection"] = od
    return config


def test_unset_fields_take_envoys_defaults():
    od = translate(with_outlier({})).clusters[0].outlier_detection
    assert od == model.OutlierDetection()
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent,
            od.max_ejection_time, od.enforcing_consecutive_gateway_failure,
            od.enforcing_failure_percentage, od.success_rate_stdev_factor) == (
        5, 10.0, 30.0, 10, 300.0, 0, 0, 1900)
    assert translate(basic()).clusters[0].outlier_detection is None


def test_fields_translate():
    od = translate(with_outlier({
        "consecutive_5xx": 3, "interval": "0.25s", "base_ejection_time": "1.5s",
        "max_ejection_percent": 50, "enforcing_consecutive_5xx": 70, "consecutive_gateway_failure": 2,
        "enforcing_consecutive_gateway_failure": 100, "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 4, "failure_percentage_threshold": 60,
        "max_ejection_time_jitter": "0.1s", "successful_active_health_check_uneject_host": False,
        "always_eject_one_host": True, "success_rate_stdev_factor": 1000})).clusters[0].outlier_detection
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent,
            od.enforcing_consecutive_5xx, od.consecutive_gateway_failure,
            od.enforcing_consecutive_gateway_failure, od.split_external_local_origin_errors,
            od.consecutive_local_origin_failure, od.failure_percentage_threshold,
            od.max_ejection_time_jitter, od.successful_active_health_check_uneject_host,
            od.always_eject_one_host, od.success_rate_stdev_factor) == (
        3, 0.25, 1.5, 50, 70, 2, 100, True, 4, 60, 0.1, False, True, 1000)


def test_max_ejection_time_defaults_to_base_when_base_is_larger():
    od = translate(with_outlier({"base_ejection_time": "400s"})).clusters[0].outlier_detection
    assert od.max_ejection_time == 400.0


def test_bad_values_name_their_path():
    p = "static_resources.clusters[0].outlier_detection"
    assert errors_of(with_outlier({"max_ejection_percent": 101, "interval": "0s"})) == [
        f"{p}.max_ejection_percent: value must be less than or equal to 100",
        f"{p}.interval: value must be greater than 0s"]
    assert errors_of(with_outlier({"base_ejection_time": "10s", "max_ejection_time": "5s"})) == [
        f"{p}.max_ejection_time: outlier detector's max_ejection_time cannot be smaller than "
        "base_ejection_time"]
    assert errors_of(with_outlier({"monitors": [{"name": "m"}]})) == [
        f"{p}.monitors: not supported by sidecar yet (see docs/compatibility.md)"]
    # Envoy 1.40's detect_degraded_hosts is newer than the protos sidecar parses with.
    assert errors_of(with_outlier({"detect_degraded_hosts": True})) == [
        f"{p}.detect_degraded_hosts: unknown field"]


# --- the detector ----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    name = "c"

    def __init__(self) -> None:
        self.changes = 0

    def health_changed(self) -> None:
        self.changes += 1


def make(n: int = 3, rng=lambda: 0, **fields) -> tuple[OutlierDetector, list[Host], Clock, FakeCluster]:
    fields.setdefault("max_ejection_percent", 100)
    clock, cluster = Clock(), FakeCluster()
    detector = OutlierDetector(model.OutlierDetection(**fields), cluster, OutlierDetectionStats("c"),
                               clock=clock, rng=rng)
    hosts = [Host(f"10.0.0.{i + 1}", 80) for i in range(n)]
    detector.set_hosts(hosts)
    return detector, hosts, clock, cluster


def ejected(h: Host) -> bool:
    return bool(h.failed & FAILED_OUTLIER_CHECK)


def counters(d: OutlierDetector) -> dict[str, int]:
    return {name: value for name, value, _ in d.stats.values() if value}


def advance(d: OutlierDetector, clock: Clock, seconds: float) -> None:
    """Run the interval timer for ``seconds`` (in steps of the interval)."""
    steps = round(seconds / d.config.interval)
    for _ in range(steps):
        clock.now += d.config.interval
        d.tick()


def test_consecutive_5xx_ejects_at_once_and_success_resets_the_count():
    d, (a, b, c), clock, cluster = make(consecutive_5xx=3)
    for status in (500, 503, 200, 500, 500):
        a.outlier.put_http_status(status)
    assert not ejected(a)
    a.outlier.put_http_status(502)
    assert ejected(a) and cluster.changes == 1
    assert counters(d) == {"ejections_consecutive_5xx": 1, "ejections_detected_consecutive_5xx": 1,
                           "ejections_enforced_consecutive_5xx": 1, "ejections_enforced_total": 1,
                           "ejections_total": 1, "ejections_active": 1}
    # An ejected host's failures run on without new detections.
    for _ in range(10):
        a.outlier.put_http_status(500)
    assert d.stats.ejections_detected_consecutive_5xx == 1


def test_4xx_is_not_a_failure():
    d, (a, *_), _, _ = make(consecutive_5xx=2)
    for _ in range(5):
        a.outlier.put_http_status(404)
    assert not ejected(a) and a.outlier.consecutive_5xx == 0


def test_gateway_failures_are_detected_but_not_enforced_by_default():
    d, (a, *_), _, _ = make(consecutive_gateway_failure=2, consecutive_5xx=100)
    for _ in range(4):
        a.outlier.put_http_status(503)
    assert not ejected(a)
    assert counters(d) == {"ejections_detected_consecutive_gateway_failure": 2}
    a.outlier.put_http_status(500)          # a non-gateway 5xx restarts the gateway count
    a.outlier.put_http_status(502)
    assert d.stats.ejections_detected_consecutive_gateway_failure == 2


def test_gateway_failures_enforced():
    d, (a, *_), _, _ = make(consecutive_gateway_failure=2, enforcing_consecutive_gateway_failure=100)
    a.outlier.put_http_status(504)
    a.outlier.put_http_status(502)
    assert ejected(a)
    assert counters(d) == {"ejections_detected_consecutive_gateway_failure": 1,
                           "ejections_enforced_consecutive_gateway_failure": 1,
                           "ejections_enforced_total": 1, "ejections_active": 1}


def test_enforcing_percentage_draws_from_the_rng():
    draws = iter([42, 41, 0])
    d, (a, *_), _, _ = make(consecutive_5xx=1, enforcing_consecutive_5xx=42, rng=lambda: next(draws))
    a.outlier.put_http_status(500)           # 42 % 100 < 42: no
    assert not ejected(a)
    assert counters(d) == {"ejections_consecutive_5xx": 1, "ejections_detected_consecutive_5xx": 1,
                           "ejections_total": 1}
    a.outlier.put_http_status(500)           # 41 % 100 < 42: ejected (the jitter draw is the 0 below)
    assert ejected(a)


def test_enforcing_zero_never_ejects():
    d, (a, *_), _, _ = make(consecutive_5xx=1, enforcing_consecutive_5xx=0)
    for _ in range(3):
        a.outlier.put_http_status(500)
    assert not ejected(a) and d.stats.ejections_detected_consecutive_5xx == 3


def test_max_ejection_percent_counts_the_host_being_ejected():
    # Envoy 1.40: (ejected + 1) / hosts must stay within the percentage.
    d, hosts, _, _ = make(n=3, consecutive_5xx=1, max_ejection_percent=10)
    hosts[0].outlier.put_http_status(500)
    assert not ejected(hosts[0]) and d.stats.ejections_overflow == 1
    assert d.stats.ejections_total == 0
    d, hosts, _, _ = make(n=4, consecutive_5xx=1, max_ejection_percent=50)
    for h in hosts:
        h.outlier.put_http_status(500)
    assert [ejected(h) for h in hosts] == [True, True, False, False]
    assert d.stats.ejections_overflow == 2 and d.stats.ejections_active == 2


def test_always_eject_one_host():
    d, hosts, _, _ = make(n=3, consecutive_5xx=1, max_ejection_percent=10, always_eject_one_host=True)
    hosts[0].outlier.put_http_status(500)
    hosts[1].outlier.put_http_status(500)
    assert [ejected(h) for h in hosts] == [True, False, False]
    assert d.stats.ejections_overflow == 1


def test_uneject_after_base_time_then_time_grows_with_ejections_and_decays():
    d, (a, *_), clock, cluster = make(consecutive_5xx=1, interval=1.0, base_ejection_time=10.0)
    a.outlier.put_http_status(500)
    advance(d, clock, 9)
    assert ejected(a)
    advance(d, clock, 1)
    assert not ejected(a) and d.stats.ejections_active == 0 and cluster.changes == 2
    a.outlier.put_http_status(500)           # at once: the backoff did not decay yet
    assert a.outlier.eject_time_backoff == 2
    advance(d, clock, 19)
    assert ejected(a)
    advance(d, clock, 1)
    assert not ejected(a)
    # Healthy intervals bring the backoff down, one per interval, to 0.
    advance(d, clock, 1)
    assert a.outlier.eject_time_backoff == 1
    advance(d, clock, 5)
    assert a.outlier.eject_time_backoff == 0
    a.outlier.put_http_status(500)
    advance(d, clock, 10)
    assert not ejected(a) and a.outlier.num_ejections == 3


def test_ejection_time_is_capped_by_max_ejection_time():
    d, (a, *_), clock, _ = make(consecutive_5xx=1, interval=1.0, base_ejection_time=10.0,
                                max_ejection_time=25.0)
    served = []
    for _ in range(5):          # eject, wait it out, eject again at once: the backoff climbs
        a.outlier.put_http_status(500)
        start = clock.now
        while ejected(a):
            advance(d, clock, 1)
        served.append(clock.now - start)
    # Time served: base x backoff, capped at max_ejection_time; the backoff stops growing
    # once base x backoff reaches max + base (Envoy).
    assert served == [10.0, 20.0, 25.0, 25.0, 25.0]
    assert a.outlier.eject_time_backoff == 4


def test_jitter_adds_to_the_ejection_time():
    d, (a, *_), clock, _ = make(consecutive_5xx=1, interval=1.0, base_ejection_time=10.0,
                                max_ejection_time_jitter=5.0, rng=lambda: 3002 + 5001 * 7)
    a.outlier.put_http_status(500)
    assert a.outlier.jitter_ms == 3002
    advance(d, clock, 13)
    assert ejected(a)
    advance(d, clock, 1)
    assert not ejected(a)


def test_unejected_host_starts_with_fresh_counts():
    d, (a, *_), clock, _ = make(consecutive_5xx=3, interval=1.0, base_ejection_time=1.0)
    for _ in range(3):
        a.outlier.put_http_status(500)
    a.outlier.put_http_status(500)
    advance(d, clock, 1)
    assert not ejected(a)
    a.outlier.put_http_status(500)
    a.outlier.put_http_status(500)
    assert not ejected(a)
    a.outlier.put_http_status(500)
    assert ejected(a)


def feed(h: Host, ok: int, failed: int) -> None:
    for _ in range(ok):
        h.outlier.put_http_status(200)
    for _ in range(failed):
        h.outlier.put_http_status(500)


def test_success_rate_ejects_below_mean_minus_stdev_factor():
    d, hosts, clock, cluster = make(n=5, consecutive_5xx=1000, interval=1.0,
                                    success_rate_request_volume=10, success_rate_stdev_factor=1900)
    # Envoy's example: rates {50, 100, 100, 100, 100}: mean 90, stdev 20, threshold 52.
    feed(hosts[0], 5, 5)
    for h in hosts[1:]:
        feed(h, 10, 0)
    advance(d, clock, 1)
    assert [ejected(h) for h in hosts] == [True, False, False, False, False]
    assert d.success_rate_stats == (90.0, 52.0)
    assert hosts[0].outlier.success_rate == 50.0 and hosts[1].outlier.success_rate == 100.0
    assert counters(d) == {"ejections_detected_success_rate": 1, "ejections_enforced_success_rate": 1,
                           "ejections_success_rate": 1, "ejections_total": 1,
                           "ejections_enforced_total": 1, "ejections_active": 1}
    assert cluster.changes == 1


def test_success_rate_needs_volume_and_minimum_hosts():
    d, hosts, clock, _ = make(n=5, consecutive_5xx=1000, interval=1.0, success_rate_request_volume=10)
    feed(hosts[0], 0, 10)
    for h in hosts[1:4]:
        feed(h, 10, 0)
    feed(hosts[4], 9, 0)            # below the volume: 4 valid hosts < 5
    advance(d, clock, 1)
    assert not any(ejected(h) for h in hosts)
    assert d.success_rate_stats == (-1.0, -1.0)
    # Only the interval that just ended counts: the next one has no requests.
    advance(d, clock, 1)
    assert not any(ejected(h) for h in hosts)


def test_failure_percentage():
    d, hosts, clock, _ = make(n=3, consecutive_5xx=1000, interval=1.0, enforcing_failure_percentage=100,
                              failure_percentage_minimum_hosts=3, failure_percentage_request_volume=4,
                              failure_percentage_threshold=50)
    feed(hosts[0], 2, 2)            # 50 % failures: at the threshold, ejected
    feed(hosts[1], 3, 1)
    feed(hosts[2], 4, 0)
    advance(d, clock, 1)
    assert [ejected(h) for h in hosts] == [True, False, False]
    assert counters(d) == {"ejections_detected_failure_percentage": 1,
                           "ejections_enforced_failure_percentage": 1, "ejections_enforced_total": 1,
                           "ejections_active": 1}


def test_failure_percentage_not_enforced_by_default():
    d, hosts, clock, _ = make(n=3, consecutive_5xx=1000, interval=1.0, failure_percentage_minimum_hosts=3,
                              failure_percentage_request_volume=4)
    feed(hosts[0], 0, 4)
    for h in hosts[1:]:
        feed(h, 4, 0)
    advance(d, clock, 1)
    assert not ejected(hosts[0]) and counters(d) == {"ejections_detected_failure_percentage": 1}


def test_without_split_local_failures_count_as_5xx():
    # UF / UC / UPE: Envoy's LocalOriginConnectFailed -> 503; UT: the timeout's 504.
    d, (a, *_), _, _ = make(consecutive_5xx=4, consecutive_gateway_failure=4,
                            enforcing_consecutive_gateway_failure=0)
    for flag in ("UF", "UC", "UPE"):
        a.outlier.put_local_failure(flag)
    assert a.outlier.consecutive_5xx == 3 and a.outlier.consecutive_gateway_failure == 3
    a.outlier.put_local_failure("DC")        # not the host's doing
    assert a.outlier.consecutive_5xx == 3
    a.outlier.put_local_failure("UT")
    assert ejected(a)
    assert counters(d) == {"ejections_consecutive_5xx": 1, "ejections_detected_consecutive_5xx": 1,
                           "ejections_detected_consecutive_gateway_failure": 1,
                           "ejections_enforced_consecutive_5xx": 1, "ejections_enforced_total": 1,
                           "ejections_total": 1, "ejections_active": 1}
    assert a.outlier.total == 4 and a.outlier.local_total == 0


def test_with_split_local_failures_have_their_own_count():
    d, (a, *_), _, _ = make(split_external_local_origin_errors=True, consecutive_local_origin_failure=3,
                            consecutive_5xx=2)
    a.outlier.put_local_failure("UF")
    a.outlier.put_local_failure("UT")
    assert a.outlier.consecutive_5xx == 0 and a.outlier.total == 0
    # A response means the connection worked: the local-origin count restarts.
    a.outlier.put_http_status(500)
    assert a.outlier.consecutive_local_origin_failure == 0 and a.outlier.consecutive_5xx == 1
    # UT / UC / UPE connected first (a local-origin success, which restarts the count, as
    # Envoy's LocalOriginConnectSuccess), then failed: they never add up on their own.
    assert (a.outlier.local_total, a.outlier.local_success) == (4, 2)
    for flag in ("UC", "UPE", "UT", "UC"):
        a.outlier.put_local_failure(flag)
    assert not ejected(a) and a.outlier.consecutive_local_origin_failure == 1
    assert (a.outlier.local_total, a.outlier.local_success) == (12, 6)
    for flag in ("UF", "UF"):
        a.outlier.put_local_failure(flag)
    assert ejected(a)
    assert counters(d) == {"ejections_detected_consecutive_local_origin_failure": 1,
                           "ejections_enforced_consecutive_local_origin_failure": 1,
                           "ejections_enforced_total": 1, "ejections_active": 1}


def test_local_origin_success_rate_and_failure_percentage_with_split():
    d, hosts, clock, _ = make(n=5, split_external_local_origin_errors=True,
                              consecutive_local_origin_failure=1000, interval=1.0,
                              success_rate_request_volume=10,
                              enforcing_failure_percentage_local_origin=100,
                              failure_percentage_threshold=90, failure_percentage_request_volume=10)
    for _ in range(10):
        hosts[0].outlier.put_local_failure("UF")
    for h in hosts[1:]:
        for _ in range(10):
            h.outlier.put_http_status(200)
    advance(d, clock, 1)
    assert ejected(hosts[0])
    assert counters(d) == {"ejections_detected_local_origin_success_rate": 1,
                           "ejections_enforced_local_origin_success_rate": 1,
                           "ejections_success_rate": 1, "ejections_enforced_total": 1,
                           "ejections_active": 1}
    assert d.local_origin_success_rate_stats[0] == 80.0
    assert d.success_rate_stats == (-1.0, -1.0)     # 4 hosts with external volume < 5


def test_active_health_check_success_unejects():
    d, (a, *_), _, cluster = make(consecutive_5xx=1)
    a.outlier.put_http_status(500)
    a.failed |= FAILED_ACTIVE_HC
    a.outlier.on_active_health_check_success()
    assert ejected(a)                    # still failing its active health check
    a.failed &= ~FAILED_ACTIVE_HC
    a.outlier.on_active_health_check_success()
    assert not ejected(a) and d.stats.ejections_active == 0 and cluster.changes == 2
    d, (a, *_), _, _ = make(consecutive_5xx=1, successful_active_health_check_uneject_host=False)
    a.outlier.put_http_status(500)
    a.outlier.on_active_health_check_success()
    assert ejected(a)


def test_host_set_changes_keep_state_by_address_and_drop_removed_hosts():
    d, (a, b, c), clock, _ = make(consecutive_5xx=1)
    a.outlier.put_http_status(500)
    b.outlier.put_http_status(500)
    assert d.stats.ejections_active == 2
    # An EDS update: a comes back as a new Host object, b is gone, a new host arrives.
    a2, d2 = Host("10.0.0.1", 80), Host("10.0.0.9", 80)
    old_b_monitor = b.outlier
    d.set_hosts([a2, c, d2])
    assert ejected(a2) and a2.outlier.num_ejections == 1 and a2.outlier.host is a2
    assert d.stats.ejections_active == 1 and d.ejected == 1
    assert d2.outlier is not None and not ejected(d2)
    old_b_monitor.put_http_status(500)       # a late answer from the removed host: no effect
    assert d.stats.ejections_detected_consecutive_5xx == 2


def test_close_leaves_ejections_active_and_ignores_late_reports():
    d, (a, b, _), _, _ = make(consecutive_5xx=1)
    a.outlier.put_http_status(500)
    d.close()
    assert d.stats.ejections_active == 0
    b.outlier.put_http_status(500)
    assert not ejected(b)


# --- wiring --------------------------------------------------------------------------------

def endpoints(*ports: int) -> tuple[model.Endpoint, ...]:
    return tuple(model.Endpoint(model.SocketAddress("127.0.0.1", p)) for p in ports)


def test_cluster_runtime_skips_ejected_hosts_and_keeps_panic_routing():
    od = model.OutlierDetection(consecutive_5xx=1, max_ejection_percent=100)
    stats = ClusterStats("c")
    c = ClusterRuntime(model.Cluster("c", endpoints=endpoints(1, 2, 3), outlier_detection=od), stats,
                       lambda: None)
    a, b, third = c.hosts
    a.outlier.put_http_status(500)
    assert {c.choose_host() for _ in range(10)} == {b, third}
    assert stats.membership_healthy == 2
    b.outlier.put_http_status(500)
    # 1 of 3 healthy: 1.4 x 33 % < 50 %: panic, every host takes traffic again (Envoy).
    assert {c.choose_host() for _ in range(10)} == {a, b, third}
    assert stats.outlier_detection is not None and stats.outlier_detection.ejections_active == 2
    c.close()


def test_cds_replacement_starts_afresh_and_counters_carry_on():
    asyncio.run(cds_replacement())


async def cds_replacement():
    store = StatsStore()
    manager = ClusterManager(store, lambda: None)
    od = model.OutlierDetection(consecutive_5xx=1, max_ejection_percent=100)
    config = model.Cluster("c", type="EDS", outlier_detection=od)
    manager.put(config, endpoints(1, 2))
    old = manager.get("c")
    old.hosts[0].outlier.put_http_status(500)
    scope = store.cluster["c"].outlier_detection
    assert scope.ejections_active == 1
    manager.put(model.Cluster("c", type="EDS", outlier_detection=od))     # same hosts carried over
    new = manager.get("c")
    assert new is not old and new.hosts == old.hosts
    assert not any(h.failed for h in new.hosts)
    assert store.cluster["c"].outlier_detection is scope
    assert scope.ejections_active == 0 and scope.ejections_enforced_total == 1
    new.hosts[1].outlier.put_http_status(500)
    assert new.hosts[1].failed == FAILED_OUTLIER_CHECK and scope.ejections_active == 1
    # Without outlier_detection the stats go, as Envoy's.
    manager.put(model.Cluster("c", type="EDS"))
    assert store.cluster["c"].outlier_detection is None
    assert "outlier_detection" not in "".join(name for name, _, _ in store.dotted())
    assert old.outlier.task is None and new.outlier.task is None     # timers stopped
    manager.close()


def test_stats_render_with_envoys_names():
    store = StatsStore()
    scope = store.cluster_scope("c")
    ClusterRuntime(model.Cluster("c", outlier_detection=model.OutlierDetection()), scope, lambda: None)
    names = {name for name, _, _ in store.dotted() if "outlier" in name}
    assert "cluster.c.outlier_detection.ejections_active" in names
    assert "cluster.c.outlier_detection.ejections_enforced_consecutive_5xx" in names
    assert len(names) == 21
    text = store.prometheus_text()
    assert "# TYPE envoy_cluster_outlier_detection_ejections_active gauge" in text
    assert 'envoy_cluster_outlier_detection_ejections_overflow{envoy_cluster_name="c"} 0' in text


@pytest.mark.parametrize("flag", ["UF", "UC", "UPE", "UT"])
def test_router_hooks_accept_every_flag(flag):
    d, (a, *_), _, _ = make(consecutive_5xx=1)
    a.outlier.put_local_failure(flag)
    assert ejected(a)


def test_tcp_connect_results():
    # Without the split: connected 200, refused 503, timed out 504 (Envoy's tcp_proxy results).
    d, (a, *_), _, _ = make(consecutive_5xx=2, consecutive_gateway_failure=100)
    a.outlier.put_connect_result("UF")
    a.outlier.put_connect_result("")
    a.outlier.put_connect_result("UT")
    assert not ejected(a) and (a.outlier.total, a.outlier.success) == (3, 1)
    a.outlier.put_connect_result("UF")
    assert ejected(a)
    # With it: local-origin results only.
    d, (a, *_), _, _ = make(split_external_local_origin_errors=True, consecutive_local_origin_failure=2)
    a.outlier.put_connect_result("UF")
    a.outlier.put_connect_result("")
    a.outlier.put_connect_result("UT")
    assert not ejected(a) and a.outlier.total == 0
    assert (a.outlier.local_total, a.outlier.local_success) == (3, 1)
    a.outlier.put_connect_result("UF")
    assert ejected(a) and d.stats.ejections_enforced_consecutive_local_origin_failure == 1
