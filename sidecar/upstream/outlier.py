"""Outlier detection (a cluster's ``outlier_detection``): per-host monitors the router feeds on
every upstream attempt, and one detector per cluster that ejects outliers and returns them.

The algorithms and their order are Envoy's (source/common/upstream/outlier_detection_impl.cc):

- Consecutive 5xx / gateway failures (502, 503, 504) / local-origin failures eject at once, when a
  count reaches its threshold (Envoy posts this to its main thread; one asyncio loop needs no post).
- Every ``interval`` the detector un-ejects hosts whose time is over (base_ejection_time x the
  host's backoff, capped by max_ejection_time, plus the jitter drawn at ejection), swaps each
  host's success-rate buckets, runs success rate and failure percentage detection over the
  interval that just ended (external origin, then local origin), and lowers the backoff of hosts
  that stayed in service for a whole interval since their last un-ejection.
- An ejection is allowed while the ejected share, this host included, stays within
  max_ejection_percent (or, with always_eject_one_host, when none is ejected); it is then
  enforced with the probability enforcing_<kind> percent.

Ejecting sets FAILED_OUTLIER_CHECK on the Host and calls ``cluster.health_changed()`` (which
rebuilds the load balancers; the panic threshold still applies).  Time and randomness are
injected (``clock``, ``rng``) so tests never sleep.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from config import model
from sidecar.stats import OutlierDetectionStats
from sidecar.upstream.host import FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK, Host

log = logging.getLogger(__name__)

# Ejection kinds (envoy.data.cluster.v3.OutlierEjectionType), named as their stats' suffixes:
# ejections_detected_<kind>, ejections_enforced_<kind>.
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
SUCCESS_RATE = "success_rate"
LOCAL_ORIGIN_SUCCESS_RATE = "local_origin_success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
LOCAL_ORIGIN_FAILURE_PERCENTAGE = "local_origin_failure_percentage"

# The enforcing_* percentage of each kind.
_ENFORCING = {
    CONSECUTIVE_5XX: "enforcing_consecutive_5xx",
    CONSECUTIVE_GATEWAY_FAILURE: "enforcing_consecutive_gateway_failure",
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE: "enforcing_consecutive_local_origin_failure",
    SUCCESS_RATE: "enforcing_success_rate",
    LOCAL_ORIGIN_SUCCESS_RATE: "enforcing_local_origin_success_rate",
    FAILURE_PERCENTAGE: "enforcing_failure_percentage",
    LOCAL_ORIGIN_FAILURE_PERCENTAGE: "enforcing_failure_percentage_local_origin",
}

# The router's flags for an attempt that got no response head, as Envoy's router reports them:
# a timeout is LocalOriginTimeout with the timeout's 504; a connect failure, a reset or a
# protocol error are all LocalOriginConnectFailed (onUpstreamReset), which maps to 503 when
# local and external errors are not split.
_TIMEOUT = "UT"
_CONNECT_FAILURE = "UF"
_AFTER_CONNECT = ("UT", "UC", "UPE")      # the connection had been made (pool ready) first


class HostMonitor:
    """One host's outlier state (``host.outlier``): consecutive-failure counts, the success-rate
    buckets (the interval being written, and the one that just ended), ejection history.

    ``put_http_status`` and ``put_local_failure`` run once per upstream attempt: a few integer
    updates, and a call into the detector only when a count reaches its threshold.
    """

    __slots__ = ("detector", "host", "split", "threshold_5xx", "threshold_gateway",
                 "threshold_local", "consecutive_5xx", "consecutive_gateway_failure",
                 "consecutive_local_origin_failure", "total", "success", "last_total",
                 "last_success", "local_total", "local_success", "local_last_total",
                 "local_last_success", "success_rate", "local_origin_success_rate",
                 "num_ejections", "last_ejection_time", "last_unejection_time",
                 "eject_time_backoff", "jitter_ms")

    def __init__(self, detector: OutlierDetector, host: Host) -> None:
        config = detector.config
        self.detector: OutlierDetector | None = detector    # None once the host left the cluster
        self.host = host
        self.split = config.split_external_local_origin_errors
        self.threshold_5xx = config.consecutive_5xx
        self.threshold_gateway = config.consecutive_gateway_failure
        self.threshold_local = config.consecutive_local_origin_failure
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0
        # Success-rate buckets: external origin (everything, without the split) and local origin.
        self.total = self.success = self.last_total = self.last_success = 0
        self.local_total = self.local_success = self.local_last_total = self.local_last_success = 0
        # As /clusters shows them: the last interval's rates when the volume counted, else -1.
        self.success_rate = -1.0
        self.local_origin_success_rate = -1.0
        self.num_ejections = 0
        self.last_ejection_time: float | None = None
        self.last_unejection_time: float | None = None
        self.eject_time_backoff = 0       # x base_ejection_time: up on ejection, down while healthy
        self.jitter_ms = 0

    def put_http_status(self, status: int) -> None:
        """The attempt got a response head with ``status``."""
        if self.split:
            # The connection worked (Envoy's LocalOriginConnectSuccess): a local-origin success.
            self.local_total += 1
            self.local_success += 1
            self.consecutive_local_origin_failure = 0
        self.total += 1
        if 500 <= status < 600:
            if 502 <= status <= 504:
                self.consecutive_gateway_failure += 1
                if self.consecutive_gateway_failure == self.threshold_gateway:
                    self._detected(CONSECUTIVE_GATEWAY_FAILURE)
            else:
                self.consecutive_gateway_failure = 0
            self.consecutive_5xx += 1
            if self.consecutive_5xx == self.threshold_5xx:
                self._detected(CONSECUTIVE_5XX)
        else:
            self.success += 1
            self.consecutive_5xx = 0
            self.consecutive_gateway_failure = 0

    def put_local_failure(self, flag: str) -> None:
        """The attempt got no response head: ``flag`` UF (connect failure), UT (timeout),
        UC / UPE (reset, protocol error).  Other flags are not the host's doing."""
        if not self.split:
            if flag == _TIMEOUT:
                self.put_http_status(504)
            elif flag == _CONNECT_FAILURE or flag in _AFTER_CONNECT:
                self.put_http_status(503)
            return
        if flag in _AFTER_CONNECT:
            # Connected first (LocalOriginConnectSuccess), then failed.  As in Envoy, the
            # connection's success restarts the count: resets and timeouts alone never add
            # up to a consecutive_local_origin_failure ejection; connect failures do.
            self.local_total += 1
            self.local_success += 1
            self.consecutive_local_origin_failure = 0
        elif flag != _CONNECT_FAILURE:
            return
        self.local_total += 1
        self.consecutive_local_origin_failure += 1
        if self.consecutive_local_origin_failure == self.threshold_local:
            self._detected(CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def put_connect_result(self, flag: str) -> None:
        """tcp_proxy's connection attempt: "" connected, "UF" refused / failed, "UT" connect
        timeout (Envoy's LocalOriginConnectSuccessFinal / ConnectFailed / Timeout: 200, 503
        and 504 without the split)."""
        if not self.split:
            self.put_http_status(200 if not flag else 504 if flag == _TIMEOUT else 503)
            return
        self.local_total += 1
        if not flag:
            self.local_success += 1
            self.consecutive_local_origin_failure = 0
            return
        self.consecutive_local_origin_failure += 1
        if self.consecutive_local_origin_failure == self.threshold_local:
            self._detected(CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def on_active_health_check_success(self) -> None:
        """For the active health checker, after each passing check (once it has updated its
        own flag): with successful_active_health_check_uneject_host (default true), a host
        that passes and is only ejected by outlier detection comes back at once (Envoy)."""
        detector = self.detector
        if detector is not None:
            detector.on_active_health_check_success(self)

    def _detected(self, kind: str) -> None:
        detector = self.detector
        if detector is not None:
            detector.on_consecutive(self, kind)

    def __repr__(self) -> str:
        return (f"HostMonitor({self.host.label} 5xx={self.consecutive_5xx} "
                f"gw={self.consecutive_gateway_failure} local={self.consecutive_local_origin_failure} "
                f"ejections={self.num_ejections} backoff={self.eject_time_backoff})")


class OutlierDetector:
    """One cluster's detector.  ``cluster`` has ``name`` and ``health_changed()``."""

    def __init__(self, config: model.OutlierDetection, cluster: Any, stats: OutlierDetectionStats,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], int] | None = None) -> None:
        self.config = config
        self.cluster = cluster
        self.stats = stats
        self.clock = clock
        self.rng = rng if rng is not None else _random64
        self.monitors: dict[Host, HostMonitor] = {}
        self.ejected = 0                  # this detector's share of ejections_active
        self.task: asyncio.Task[None] | None = None
        # Envoy reckons ejection times in whole milliseconds.
        self.interval_ms = round(config.interval * 1000)
        self.base_ms = round(config.base_ejection_time * 1000)
        self.max_ms = round(config.max_ejection_time * 1000)
        self.jitter_max_ms = round(config.max_ejection_time_jitter * 1000)
        # (average, ejection threshold) of the last success-rate pass, -1 when none ran
        # (external origin, local origin), as /clusters shows them.
        self.success_rate_stats = (-1.0, -1.0)
        self.local_origin_success_rate_stats = (-1.0, -1.0)

    # --- hosts ------------------------------------------------------------------------

    def set_hosts(self, hosts: list[Host]) -> None:
        """The cluster's host set changed: hosts that stay keep their monitor (an endpoint that
        comes back as a new Host object, as EDS and DNS updates make them, takes its old
        monitor and ejection over, as Envoy keeps the host); new ones get a fresh monitor;
        the monitors of hosts gone are dropped (an ejected one leaves ejections_active)."""
        old = self.monitors
        kept = {h: old[h] for h in hosts if h in old}
        spare = {(h.address, h.port): m for h, m in old.items() if h not in kept}
        monitors: dict[Host, HostMonitor] = {}
        for h in hosts:
            m = kept.get(h)
            if m is None:
                m = spare.pop((h.address, h.port), None)
                if m is not None:
                    h.failed = (h.failed & ~FAILED_OUTLIER_CHECK) | (m.host.failed & FAILED_OUTLIER_CHECK)
                    m.host = h
                else:
                    m = HostMonitor(self, h)
                    # New to this detector (perhaps ejected by the cluster this one replaced):
                    # it starts in service, as Envoy's new cluster starts with new hosts.
                    h.failed &= ~FAILED_OUTLIER_CHECK
                h.outlier = m
            monitors[h] = m
        for m in spare.values():
            if m.host.failed & FAILED_OUTLIER_CHECK:
                self._active(-1)
            m.detector = None
        self.monitors = monitors

    # --- ejection -----------------------------------------------------------------------

    def on_consecutive(self, monitor: HostMonitor, kind: str) -> None:
        """A consecutive-failure count reached its threshold (Envoy's onConsecutiveErrorWorker)."""
        host = monitor.host
        if monitor.detector is not self or host.failed & FAILED_OUTLIER_CHECK:
            return      # an ejected host's counts run on; they restart when it comes back
        self._count("ejections_detected_" + kind)
        ejected = self._eject(monitor, kind)
        # The count restarts, so a new bout is detected without a success in between.
        if kind == CONSECUTIVE_5XX:
            self.stats.ejections_consecutive_5xx += 1        # deprecated, still counted
            monitor.consecutive_5xx = 0
        elif kind == CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutive_gateway_failure = 0
        else:
            monitor.consecutive_local_origin_failure = 0
        if ejected:
            self.cluster.health_changed()

    def _eject(self, monitor: HostMonitor, kind: str) -> bool:
        """Eject if max_ejection_percent allows and the kind is enforced; True if it was."""
        config = self.config
        stats = self.stats
        share = 100.0 * (self.ejected + 1) / len(self.monitors)
        allowed = share <= min(100, config.max_ejection_percent)
        if config.always_eject_one_host:
            allowed = allowed or self.ejected == 0
        if not allowed:
            stats.ejections_overflow += 1
            return False
        if kind == CONSECUTIVE_5XX or kind == SUCCESS_RATE:
            stats.ejections_total += 1                       # deprecated, still counted
        if not self._enforced(kind):
            return False
        self._active(1)
        stats.ejections_enforced_total += 1
        self._count("ejections_enforced_" + kind)
        host = monitor.host
        host.failed |= FAILED_OUTLIER_CHECK
        monitor.num_ejections += 1
        monitor.last_ejection_time = self.clock()
        # Jitter spreads the returns of hosts ejected together (no reconnection storm).
        monitor.jitter_ms = self.rng() % (self.jitter_max_ms + 1)
        if monitor.eject_time_backoff * self.base_ms < self.max_ms + self.base_ms:
            monitor.eject_time_backoff += 1
        log.info("cluster %s: host %s ejected (%s, ejection %d)", self.cluster.name, host.label,
                 kind, monitor.num_ejections)
        return True

    def _enforced(self, kind: str) -> bool:
        percent: int = getattr(self.config, _ENFORCING[kind])
        return percent >= 100 or (percent > 0 and self.rng() % 100 < percent)

    def _uneject(self, monitor: HostMonitor, now: float) -> None:
        self._active(-1)
        monitor.host.failed &= ~FAILED_OUTLIER_CHECK
        # Fresh counts, so a few new errors do not eject it again at once.
        monitor.consecutive_5xx = 0
        monitor.consecutive_gateway_failure = 0
        monitor.consecutive_local_origin_failure = 0
        monitor.last_unejection_time = now
        log.info("cluster %s: host %s back in service", self.cluster.name, monitor.host.label)

    def on_active_health_check_success(self, monitor: HostMonitor) -> None:
        host = monitor.host
        if (monitor.detector is self and self.config.successful_active_health_check_uneject_host
                and host.failed & FAILED_OUTLIER_CHECK and not host.failed & FAILED_ACTIVE_HC):
            self._uneject(monitor, self.clock())
            self.cluster.health_changed()

    def _active(self, delta: int) -> None:
        self.ejected += delta
        self.stats.ejections_active += delta

    def _count(self, stat: str) -> None:
        setattr(self.stats, stat, getattr(self.stats, stat) + 1)

    # --- the interval timer -----------------------------------------------------------------

    def tick(self) -> None:
        """One interval (Envoy's onIntervalTimer)."""
        now = self.clock()
        changed = False
        for host, m in self.monitors.items():
            if host.failed & FAILED_OUTLIER_CHECK:
                assert m.last_ejection_time is not None
                eject_ms = min(self.base_ms * m.eject_time_backoff, self.max_ms) + m.jitter_ms
                if eject_ms <= (now - m.last_ejection_time) * 1000:
                    self._uneject(m, now)
                    changed = True
            # The bucket written during the interval that ended becomes the one read.
            m.last_total, m.last_success, m.total, m.success = m.total, m.success, 0, 0
            m.local_last_total, m.local_last_success = m.local_total, m.local_success
            m.local_total = m.local_success = 0
            m.success_rate = m.local_origin_success_rate = -1.0
        changed = self._success_rate_pass(local=False) or changed
        changed = self._success_rate_pass(local=True) or changed
        interval = self.interval_ms / 1000
        for host, m in self.monitors.items():
            # In service for a whole interval since it came back: shorter ejection next time.
            if (not host.failed & FAILED_OUTLIER_CHECK and m.last_unejection_time is not None
                    and now - m.last_unejection_time >= interval and m.eject_time_backoff):
                m.eject_time_backoff -= 1
        if changed:
            self.cluster.health_changed()

    def _success_rate_pass(self, local: bool) -> bool:
        """Success rate and failure percentage detection over the last interval's buckets
        (Envoy's processSuccessRateEjections); True if a host was ejected."""
        config = self.config
        stats_pair = (-1.0, -1.0)
        if local:
            self.local_origin_success_rate_stats = stats_pair
        else:
            self.success_rate_stats = stats_pair
        count = len(self.monitors)
        if count < config.success_rate_minimum_hosts and count < config.failure_percentage_minimum_hosts:
            return False
        sr_volume = config.success_rate_request_volume
        fp_volume = config.failure_percentage_request_volume
        min_volume = min(sr_volume, fp_volume)
        sr_hosts: list[tuple[HostMonitor, float]] = []
        fp_hosts: list[tuple[HostMonitor, float]] = []
        rate_sum = 0.0
        for host, m in self.monitors.items():
            if host.failed & FAILED_OUTLIER_CHECK:
                continue
            volume = m.local_last_total if local else m.last_total
            if not volume:
                continue
            rate = (m.local_last_success if local else m.last_success) * 100.0 / volume
            if volume >= min_volume:
                if local:
                    m.local_origin_success_rate = rate
                else:
                    m.success_rate = rate
            if volume >= sr_volume:
                sr_hosts.append((m, rate))
                rate_sum += rate
            if volume >= fp_volume:
                fp_hosts.append((m, rate))
        changed = False
        if sr_hosts and len(sr_hosts) >= config.success_rate_minimum_hosts:
            # Outliers: below mean - stdev_factor x standard deviation.
            mean = rate_sum / len(sr_hosts)
            variance = sum((rate - mean) ** 2 for _, rate in sr_hosts) / len(sr_hosts)
            threshold = mean - config.success_rate_stdev_factor / 1000.0 * math.sqrt(variance)
            if local:
                self.local_origin_success_rate_stats = (mean, threshold)
            else:
                self.success_rate_stats = (mean, threshold)
            kind = LOCAL_ORIGIN_SUCCESS_RATE if local else SUCCESS_RATE
            for m, rate in sr_hosts:
                if rate < threshold:
                    self.stats.ejections_success_rate += 1       # deprecated, still counted
                    self._count("ejections_detected_" + kind)
                    changed = self._eject(m, kind) or changed
        if fp_hosts and len(fp_hosts) >= config.failure_percentage_minimum_hosts:
            kind = LOCAL_ORIGIN_FAILURE_PERCENTAGE if local else FAILURE_PERCENTAGE
            for m, rate in fp_hosts:
                if m.host.failed & FAILED_OUTLIER_CHECK:
                    continue        # just ejected by success rate
                if 100.0 - rate >= config.failure_percentage_threshold:
                    self._count("ejections_detected_" + kind)
                    changed = self._eject(m, kind) or changed
        return changed

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"outlier:{self.cluster.name}")

    async def _run(self) -> None:
        # Envoy re-arms its timer after each pass: the interval runs from the end of the last.
        period = max(self.interval_ms, 1) / 1000      # (an interval under 1 ms: Envoy's 0 ms)
        while True:
            await asyncio.sleep(period)
            try:
                self.tick()
            except Exception:
                log.exception("cluster %s: outlier detection pass failed", self.cluster.name)

    def close(self) -> None:
        """The cluster is removed or replaced: stop the timer; the ejections leave
        ejections_active (as Envoy's detector destructor) and late reports change nothing."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._active(-self.ejected)
        for m in self.monitors.values():
            m.detector = None

    def __repr__(self) -> str:
        return f"<OutlierDetector {self.cluster.name} ejected={self.ejected} hosts={len(self.monitors)}>"


def _random64() -> int:
    return random.getrandbits(64)
