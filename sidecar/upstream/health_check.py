"""Active health checking of a cluster's hosts, as Envoy's cluster ``health_checks``.

One HealthChecker per cluster, one HostSession per host (``host.health_checker``),
each the state machine of Envoy's ActiveHealthCheckSession
(source/extensions/health_checkers/common/health_checker_base_impl.cc):

- A host of a checked cluster starts FAILED_ACTIVE_HC.  Its first check decides at
  once (a first success makes it healthy); after that ``healthy_threshold``
  successes in a row bring it back and ``unhealthy_threshold`` network failures
  (connect error, reset, timeout) or retriable HTTP statuses take it out, while an
  active failure (an unexpected HTTP status, a gRPC answer other than SERVING)
  takes it out at once.  ``fail_immediately`` (the router saw
  x-envoy-immediate-health-check-fail) does too, as a passive failure.
- The next check is armed when one completes: ``interval`` while healthy,
  ``unhealthy_interval`` while not, the *_edge_intervals while a change is pending,
  and ``no_traffic_interval`` / ``no_traffic_healthy_interval`` while the cluster has
  never carried traffic (Envoy looks at upstream_cx_total and the byte counters);
  plus interval_jitter_percent and interval_jitter.  ``timeout`` bounds each check.
- The cluster's ``initialized`` waits for its first round, as Envoy's cluster
  initialization (ClusterImplBase::onInitDone): once the hosts are known, as many check
  results as there are hosts, from any host (Envoy counts results, not hosts: a fast host
  checked twice stands in for a silent one); the cluster manager bounds the wait.

Timers go through an injectable ``call_later`` and randomness through an injectable
RNG, so the state logic is tested without real sleeps; the network side lives in
sidecar/upstream/health_probes.py.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from config import model
from sidecar.stats import HealthCheckStats
from sidecar.upstream.health_probes import Outcome, Probe, make_probe
from sidecar.upstream.host import (ACTIVE_HC_TIMEOUT, DEGRADED_ACTIVE_HC,
                                   EXCLUDED_VIA_IMMEDIATE_HC_FAIL, FAILED_ACTIVE_HC, Host)

log = logging.getLogger(__name__)

__all__ = ["HealthChecker", "HostSession", "Outcome", "Transition", "update_hosts"]

# The Host flags the checker owns; the last two ("marks") go with FAILED_ACTIVE_HC.
_MARKS = EXCLUDED_VIA_IMMEDIATE_HC_FAIL | ACTIVE_HC_TIMEOUT
_HC_FLAGS = FAILED_ACTIVE_HC | DEGRADED_ACTIVE_HC | _MARKS


class Transition(enum.Enum):
    """Envoy's HealthTransition: what a check result did to the host."""

    UNCHANGED = 0
    CHANGED = 1
    CHANGE_PENDING = 2      # a threshold is being counted


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class HostSession:
    """One host's active health checking: counters, flags, interval and timeout timers."""

    __slots__ = ("checker", "host", "key", "probe", "num_healthy", "num_unhealthy",
                 "first_check", "unhealthy", "degraded", "marks", "interval_timer",
                 "timeout_timer", "task", "closed")

    def __init__(self, checker: HealthChecker, host: Host, unhealthy: bool = True,
                 degraded: bool = False, marks: int = 0) -> None:
        self.checker = checker
        self.host = host
        self.key = (host.address, host.port)
        self.probe: Probe | None = None
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.first_check = True
        # The session's view of the host (mirrored into host.failed): FAILED_ACTIVE_HC and
        # DEGRADED_ACTIVE_HC.  A new host starts unhealthy, pending its first check.
        self.unhealthy = unhealthy
        self.degraded = degraded
        self.marks = marks            # EXCLUDED_VIA_IMMEDIATE_HC_FAIL, ACTIVE_HC_TIMEOUT
        stats = checker.stats
        stats.healthy += not unhealthy
        stats.degraded += degraded
        self.interval_timer: TimerHandle | None = None
        self.timeout_timer: TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.attach(host)

    def attach(self, host: Host) -> None:
        """Take (again) a Host object for this address: EDS and DNS updates make new ones."""
        self.host = host
        host.health_checker = self
        host.failed = ((host.failed & ~_HC_FLAGS) | (FAILED_ACTIVE_HC if self.unhealthy else 0)
                       | (DEGRADED_ACTIVE_HC if self.degraded else 0) | self.marks)

    def mark(self, flag: int, on: bool) -> None:
        """Set or clear EXCLUDED_VIA_IMMEDIATE_HC_FAIL / ACTIVE_HC_TIMEOUT."""
        if on:
            self.marks |= flag
            self.host.failed |= flag
        else:
            self.marks &= ~flag
            self.host.failed &= ~flag

    def __repr__(self) -> str:
        return (f"HostSession({self.host.label} unhealthy={self.unhealthy} "
                f"degraded={self.degraded} ok={self.num_healthy} ko={self.num_unhealthy})")

    # --- timers and the check in flight ------------------------------------------------

    def start(self) -> None:
        """Envoy's onInitialInterval: check now, or after a random part of initial_jitter."""
        jitter = self.checker.config.initial_jitter
        if jitter > 0:
            self.interval_timer = self.checker.call_later(
                self.checker.with_jitter(0, jitter), self.on_interval)
        else:
            self.on_interval()

    def on_interval(self) -> None:
        """Start one check, and the timeout timer that bounds it."""
        self.interval_timer = None
        if self.closed:
            return
        checker = self.checker
        if self.probe is None:
            self.probe = checker.probe_factory(self)
        self.timeout_timer = checker.call_later(checker.config.timeout, self.on_timeout)
        checker.stats.attempt += 1
        self.task = checker.spawn(self._check(self.probe))

    async def _check(self, probe: Probe) -> None:
        try:
            outcome = await probe.check()
        except Exception as e:      # (not CancelledError: a timeout or close cancels)
            # A write on a connection that just went away, a protocol error, ...: the
            # connection failed (Envoy: a reset stream, a network failure).
            log.debug("cluster %s: health check of %s: %r", self.checker.name, self.host.label, e)
            probe.reset()
            outcome = Outcome.NETWORK
        self.task = None
        if not self.closed:
            self.complete(outcome)

    def on_timeout(self) -> None:
        """The check did not finish in ``timeout``: a network failure (NETWORK_TIMEOUT)."""
        self.timeout_timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.probe is not None:
            self.probe.reset()
        self.complete(Outcome.TIMEOUT)

    def connection_lost(self) -> None:
        """The probe's connection closed while no check was in flight and no close was
        expected (Envoy's TCP checker counts that as a network failure)."""
        if not self.closed and self.task is None:
            self.complete(Outcome.NETWORK)

    def complete(self, outcome: Outcome) -> None:
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
            self.timeout_timer = None
        if outcome is Outcome.SUCCESS or outcome is Outcome.DEGRADED:
            delay = self.handle_success(outcome is Outcome.DEGRADED)
        else:
            delay = self.handle_failure(outcome)
        if self.closed:
            return
        if self.interval_timer is not None:
            self.interval_timer.cancel()
        self.interval_timer = self.checker.call_later(delay, self.on_interval)

    def close(self) -> None:
        """Stop for good (host removed, cluster closed or replaced)."""
        if not self.closed:
            stats = self.checker.stats
            stats.healthy -= not self.unhealthy
            stats.degraded -= self.degraded
            self.closed = True
            if self.first_check:        # a host gone before its first check counts as checked
                self.checker.init_progress()
        for timer in (self.interval_timer, self.timeout_timer):
            if timer is not None:
                timer.cancel()
        self.interval_timer = self.timeout_timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    # --- the state machine (Envoy's handleSuccess / setUnhealthy) -----------------------

    def handle_success(self, degraded: bool = False) -> float:
        """A passing check; returns the delay to the next one."""
        self.num_unhealthy = 0
        transition = Transition.UNCHANGED
        if self.unhealthy:
            # The first result moves a host straight to healthy: faster start-up, as Envoy.
            if self.first_check or self._count_healthy() == self.checker.config.healthy_threshold:
                self.unhealthy = False
                self.host.failed &= ~FAILED_ACTIVE_HC
                self.mark(_MARKS, False)
                self.checker.stats.healthy += 1
                transition = Transition.CHANGED
                log.info("cluster %s: health check: %s is healthy", self.checker.name,
                         self.host.label)
            else:
                transition = Transition.CHANGE_PENDING
        if degraded != self.degraded:
            self.degraded = degraded
            if degraded:
                self.host.failed |= DEGRADED_ACTIVE_HC
                self.checker.stats.degraded += 1
            else:
                # Envoy 1.40 does not lower the degraded gauge here (only when the session
                # goes away): matched, so both show the same numbers.
                self.host.failed &= ~DEGRADED_ACTIVE_HC
            if transition is Transition.UNCHANGED:
                transition = Transition.CHANGED
        self.checker.stats.success += 1
        self.checker.check_complete(self, transition, healthy=True)
        return self.checker.interval(True, transition)

    def handle_failure(self, outcome: Outcome) -> float:
        """A failing check; returns the delay to the next one."""
        transition = self.set_unhealthy(outcome)
        return self.checker.interval(False, transition)

    def set_unhealthy(self, outcome: Outcome) -> Transition:
        self.num_healthy = 0
        network = outcome is Outcome.NETWORK or outcome is Outcome.TIMEOUT
        transition = Transition.UNCHANGED
        if not self.unhealthy:
            # Network failures and retriable statuses count up to unhealthy_threshold;
            # an active failure (bad status, NOT_SERVING) or a passive one ejects at once.
            if ((not network and outcome is not Outcome.RETRIABLE)
                    or self._count_unhealthy() == self.checker.config.unhealthy_threshold):
                self.unhealthy = True
                self.host.failed |= FAILED_ACTIVE_HC
                self.checker.stats.healthy -= 1
                transition = Transition.CHANGED
                log.info("cluster %s: health check: %s is unhealthy (%s)", self.checker.name,
                         self.host.label, outcome.name.lower())
            else:
                transition = Transition.CHANGE_PENDING
        # A timeout while failed shows as /active_hc_timeout; any other result clears it.
        self.mark(ACTIVE_HC_TIMEOUT, outcome is Outcome.TIMEOUT and self.unhealthy)
        stats = self.checker.stats
        stats.failure += 1
        if network:
            stats.network_failure += 1
        elif outcome is Outcome.PASSIVE:
            stats.passive_failure += 1
        self.checker.check_complete(self, transition, healthy=False)
        return transition

    def _count_healthy(self) -> int:
        self.num_healthy += 1
        return self.num_healthy

    def _count_unhealthy(self) -> int:
        self.num_unhealthy += 1
        return self.num_unhealthy

    def fail_immediately(self) -> None:
        """The router got x-envoy-immediate-health-check-fail from this host: fail it now
        (a passive failure; the next scheduled check stays as it is, as in Envoy)."""
        if not self.closed:
            # Excluded from the level size too (no rebuild just for that when the host
            # was failed already, as Envoy).
            self.mark(EXCLUDED_VIA_IMMEDIATE_HC_FAIL, True)
            self.set_unhealthy(Outcome.PASSIVE)


class HealthChecker:
    """The cluster's active health checker: a session per host, the stats, the first round."""

    def __init__(self, cluster: Any, config: model.HealthCheck, *,
                 call_later: CallLater | None = None, rng: random.Random | None = None,
                 spawn: Callable[[Any], asyncio.Task[None]] | None = None,
                 probe_factory: Callable[[HostSession], Probe] | None = None) -> None:
        self.cluster = cluster            # ClusterRuntime: name, stats, hosts, health_changed()
        self.name: str = cluster.name
        self.config = config
        stats = cluster.stats.health_check
        if stats is None:                 # the scope outlives CDS updates, as Envoy's stats
            stats = cluster.stats.health_check = HealthCheckStats(cluster.name)
        self.stats: HealthCheckStats = stats
        self._call_later = call_later
        self._spawn = spawn
        self.rng = rng or random.Random()
        self.probe_factory: Callable[[HostSession], Probe] = probe_factory or (
            lambda session: make_probe(self, session))
        self.sessions: dict[tuple[str, int], HostSession] = {}
        self.started = False
        self.hosts_known = False
        self.init_pending: int | None = None      # check results the first round still needs
        self.init_begun = False
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<HealthChecker {self.name} {list(self.sessions.values())}>"

    # --- scheduling (injectable) ----------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        if self._call_later is None:
            return asyncio.get_running_loop().call_later(delay, callback)
        return self._call_later(delay, callback)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        """A task owned by this checker (cancelled by close)."""
        task = self._spawn(coro) if self._spawn is not None else asyncio.get_running_loop(
        ).create_task(coro, name=f"health_check:{self.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def with_jitter(self, base: float, jitter: float) -> float:
        """Envoy's intervalWithJitter, in its whole milliseconds: + a random part of
        interval_jitter_percent of the base, + a random part of ``jitter``; at least 1 ms."""
        base_ms = int(round(base * 1000))
        percent_mod = self.config.interval_jitter_percent * base_ms // 100
        if percent_mod > 0:
            base_ms += self.rng.randrange(percent_mod)
        jitter_ms = int(round(jitter * 1000))
        if jitter_ms > 0:
            base_ms += self.rng.randrange(jitter_ms)
        return max(1, base_ms) / 1000

    def has_traffic(self) -> bool:
        """Whether the cluster ever carried traffic (Envoy: upstream_cx_total or the byte
        counters used); until then the no_traffic intervals apply."""
        s = self.cluster.stats
        return bool(s.upstream_cx_total or s.upstream_cx_tx_bytes_total
                    or s.upstream_cx_rx_bytes_total)

    def interval(self, healthy: bool, transition: Transition) -> float:
        """The delay to a host's next check after one that ended ``healthy`` or not."""
        c = self.config
        pending = transition is Transition.CHANGE_PENDING
        if self.has_traffic():
            if healthy:
                base = c.healthy_edge_interval if pending else c.interval
            else:
                base = c.unhealthy_edge_interval if pending else c.unhealthy_interval
        else:
            base = c.no_traffic_healthy_interval if healthy and not pending else c.no_traffic_interval
        return self.with_jitter(base, c.interval_jitter)

    # --- hosts ---------------------------------------------------------------------------

    def hosts_changed(self, hosts: list[Host]) -> None:
        """The cluster's new host set: a host whose address stays keeps its session and
        state (on the new Host object); new hosts start unhealthy, or with the state of a
        previous checker's session (a CDS update of the cluster); removed ones stop."""
        sessions: dict[tuple[str, int], HostSession] = {}
        added: list[HostSession] = []
        for host in hosts:
            key = (host.address, host.port)
            session = self.sessions.get(key) or sessions.get(key)
            if session is not None:
                session.attach(host)
            else:
                previous = host.health_checker
                if isinstance(previous, HostSession) and previous.checker is not self:
                    session = HostSession(self, host, previous.unhealthy, previous.degraded,
                                          previous.marks)
                else:
                    session = HostSession(self, host)
                added.append(session)
            sessions[key] = session
        removed = [s for key, s in self.sessions.items() if key not in sessions]
        self.sessions = sessions
        self.hosts_known = True
        for session in removed:
            session.close()
        if not self.started or self.closed:
            return
        for session in added:
            session.start()
        self._begin_init()

    def inherit(self, hosts: list[Host]) -> None:
        """Carry the health state of a replaced cluster's hosts over (by address).

        Envoy keeps serving with the old cluster until the new one has run its first
        round of checks; sidecar swaps at once, so the new sessions start from the old
        state instead of all unhealthy (and their first check decides, as Envoy's)."""
        previous = {(h.address, h.port): h.health_checker for h in hosts}
        changed = False
        for key, session in self.sessions.items():
            old = previous.get(key)
            if isinstance(old, HostSession) and old.checker is not self:
                self.stats.healthy += session.unhealthy - old.unhealthy
                self.stats.degraded += old.degraded - session.degraded
                session.unhealthy, session.degraded = old.unhealthy, old.degraded
                session.marks = old.marks
                session.attach(session.host)
                changed = True
        if changed:
            self.cluster.health_changed()

    def start(self) -> None:
        self.started = True
        for session in list(self.sessions.values()):
            session.start()
        if self.hosts_known:        # STRICT_DNS: once the first resolution gave hosts
            self._begin_init()

    def close(self) -> None:
        """Stop every session (the cluster closed, or a CDS update replaced it).  Checks in
        flight are cancelled first; what the probes then start (closing a gRPC channel)
        runs to its end."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        for session in self.sessions.values():
            session.close()

    # --- results -------------------------------------------------------------------------

    def check_complete(self, session: HostSession, transition: Transition, healthy: bool) -> None:
        """After each result (Envoy's runCallbacks): a changed host rebuilds the cluster's
        load balancers; results count towards the first round."""
        session.first_check = False
        if transition is Transition.CHANGED:
            self.cluster.health_changed()
        if healthy and not session.unhealthy:
            # Envoy's outlier detector un-ejects a host that passes an active check
            # (successful_active_health_check_uneject_host).
            outlier = session.host.outlier
            if outlier is not None:
                outlier.on_active_health_check_success()
        self.init_progress()

    def _begin_init(self) -> None:
        if not self.init_begun:
            self.init_begun = True
            self.init_pending = len(self.sessions)
            self.init_progress(0)

    def init_progress(self, results: int = 1) -> None:
        if self.init_pending is None:
            return
        self.init_pending -= results
        if self.init_pending <= 0:
            self.init_pending = None
            self.cluster.initialized.set()


def update_hosts(checker: HealthChecker | None, hosts: list[Host]) -> None:
    """ClusterRuntime.set_hosts' hook: hand the new host set to the cluster's checker; without
    one, hosts that a previous checker flagged (a CDS update dropped health_checks) are
    released from its flags."""
    if checker is not None:
        checker.hosts_changed(hosts)
        return
    for host in hosts:
        if isinstance(host.health_checker, HostSession):
            host.failed &= ~_HC_FLAGS
            host.health_checker = None
