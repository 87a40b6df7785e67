"""Host selection across priority levels and localities, as Envoy's LoadBalancerBase and
ZoneAwareLoadBalancerBase (source/extensions/load_balancing_policies/common/load_balancer_impl.cc).

``build()`` turns a cluster's hosts into one LoadBalancer whose ``pick(hash_key)`` does
Envoy's whole choice: a priority level by the priority load (healthy, then degraded),
then, unless that level is in panic, a locality by its effective weight (with
common_lb_config.locality_weighted_lb_config), then a host by the cluster's lb_policy
(``lb.build_lb``).  Everything is computed when the host set or a host's health changes;
a pick is one random number and a table look-up, and the common case (one level, no
locality weights, no panic) returns the lb_policy balancer itself: no extra layer at all.

The load computation (``priority_load``) is Envoy's integer arithmetic:
  health(P)  = min(100, overprovisioning_factor x healthy / hosts)   (by weight with
               weighted_priority_health; DRAINING hosts are excluded from ``hosts``)
  normalized total availability = min(100, sum of healthy and degraded health)
  the healthy load goes to the levels in order, health x 100 / total, what is left to the
  degraded health the same way, a rounding remainder to the first level with any;
  when the total is below 100, a level with (healthy + degraded) / hosts below
  healthy_panic_threshold is in panic (all its hosts); when every level is, the load is
  split by host count instead ("total panic").
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence

from config import model
from sidecar.stats import ClusterStats
from sidecar.upstream.host import EXCLUDED_VIA_IMMEDIATE_HC_FAIL, Host
from sidecar.upstream.lb import HASHING_POLICIES, LoadBalancer, build_lb


class LevelCounts:
    """What the priority load is computed from, for one priority level."""

    __slots__ = ("hosts", "healthy", "degraded", "excluded", "weight", "healthy_weight",
                 "degraded_weight", "excluded_weight")

    def __init__(self, hosts: int, healthy: int, degraded: int = 0, excluded: int = 0,
                 weight: int = 0, healthy_weight: int = 0, degraded_weight: int = 0,
                 excluded_weight: int = 0) -> None:
        self.hosts = hosts
        self.healthy = healthy
        self.degraded = degraded
        self.excluded = excluded
        self.weight = weight
        self.healthy_weight = healthy_weight
        self.degraded_weight = degraded_weight
        self.excluded_weight = excluded_weight

    @classmethod
    def of(cls, hosts: Sequence[Host]) -> LevelCounts:
        c = cls(len(hosts), 0)
        for h in hosts:
            c.weight += h.weight
            if h.healthy:
                c.healthy += 1
                c.healthy_weight += h.weight
            elif h.degraded:
                c.degraded += 1
                c.degraded_weight += h.weight
            if excluded(h):
                c.excluded += 1
                c.excluded_weight += h.weight
        return c


class PriorityLoad:
    """Per level: percent of requests to its healthy and degraded hosts, and panic."""

    __slots__ = ("healthy", "degraded", "panic", "health", "degraded_health")

    def __init__(self, n: int) -> None:
        self.healthy = [0] * n
        self.degraded = [0] * n
        self.panic = [False] * n
        self.health = [0] * n              # availability before normalization
        self.degraded_health = [0] * n

    def __repr__(self) -> str:
        return (f"PriorityLoad(healthy={self.healthy}, degraded={self.degraded}, "
                f"panic={self.panic})")


def excluded(host: Host) -> bool:
    """Envoy 1.40 excludes EDS-DRAINING hosts, and hosts failed by an
    x-envoy-immediate-health-check-fail answer, from the level size (they stay in the level:
    panic mode still uses them)."""
    return host.health_status == "DRAINING" or bool(host.failed & EXCLUDED_VIA_IMMEDIATE_HC_FAIL)


def panic_percent(threshold: float) -> int:
    """healthy_panic_threshold as Envoy uses it: rounded to a whole percent."""
    return min(100, int(threshold + 0.5))


def priority_load(levels: Sequence[LevelCounts], overprovisioning_factor: int = 140,
                  panic_threshold: int = 50, weighted: bool = False) -> PriorityLoad:
    """Envoy's recalculatePerPriorityState + recalculatePerPriorityPanic for a fresh load
    balancer over ``levels`` (index = priority)."""
    n = len(levels)
    load = PriorityLoad(n)
    for i, lv in enumerate(levels):
        count = lv.hosts - lv.excluded
        if count <= 0:
            continue
        if weighted:
            healthy, degraded, total = (lv.healthy_weight, lv.degraded_weight,
                                        lv.weight - lv.excluded_weight)
        else:
            healthy, degraded, total = lv.healthy, lv.degraded, count
        if total <= 0:
            continue
        load.health[i] = min(100, overprovisioning_factor * healthy // total)
        load.degraded_health[i] = min(100, overprovisioning_factor * degraded // total)
    available = min(100, sum(load.health) + sum(load.degraded_health))
    if available > 0:
        first_healthy, left = _distribute(load.healthy, load.health, 100, available)
        first_degraded, left = _distribute(load.degraded, load.degraded_health, left, available)
        if left:
            # Rounding: to the first level with healthy hosts, else with degraded ones.
            if first_healthy >= 0:
                load.healthy[first_healthy] += left
            else:
                load.degraded[first_degraded] += left
    threshold = min(100, panic_threshold)
    if threshold == 0 and available == 0:
        load.healthy[0] = 100      # nothing routable and no panic: P0 (no host) takes it all
        return load
    for i, lv in enumerate(levels):
        # With 100% available across the levels no level panics, however few hosts it has.
        load.panic[i] = available < 100 and _in_panic(lv, threshold)
    if all(load.panic):
        _total_panic(load, levels)
    return load


def _distribute(out: list[int], availability: list[int], total_load: int,
                normalized_total: int) -> tuple[int, int]:
    first = -1
    for i, a in enumerate(availability):
        if first < 0 and a > 0:
            first = i
        out[i] = min(total_load, a * 100 // normalized_total)
        total_load -= out[i]
    return first, total_load


def _in_panic(lv: LevelCounts, threshold: int) -> bool:
    count = lv.hosts - lv.excluded
    healthy = 100.0 * lv.healthy / count if count else 0.0
    degraded = 100.0 * lv.degraded / count if count else 0.0
    return healthy + degraded < threshold


def _total_panic(load: PriorityLoad, levels: Sequence[LevelCounts]) -> None:
    """Every level in panic: the load follows the host counts, health aside."""
    total = sum(lv.hosts for lv in levels)
    load.degraded = [0] * len(levels)
    if total == 0:
        load.healthy = [100] + [0] * (len(levels) - 1)
        return
    left = 100
    first = -1
    for i, lv in enumerate(levels):
        if first < 0 and lv.hosts:
            first = i
        load.healthy[i] = 100 * lv.hosts // total
        left -= load.healthy[i]
    load.healthy[first] += left


# --- the balancers a pick goes through ---------------------------------------------------

class PrioritySelector(LoadBalancer):
    """Envoy's choosePriority: 100 buckets, each the balancer that serves that percent of the
    priority load.  Random bucket per pick; with a hashing lb_policy the hash key's."""

    def __init__(self, hosts: list[Host], table: list[LoadBalancer], by_hash: bool,
                 rand: Callable[[], float]) -> None:
        super().__init__(hosts)
        self.table = table
        self.by_hash = by_hash
        self.random = rand

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if self.by_hash and hash_key is not None:
            return self.table[hash_key % 100].pick(hash_key, attempt)
        return self.table[int(self.random() * 100)].pick(hash_key, attempt)


class PanicBalancer(LoadBalancer):
    """A level in panic: every one of its hosts, health aside; counts lb_healthy_panic."""

    def __init__(self, lb: LoadBalancer, stats: ClusterStats | None) -> None:
        super().__init__(lb.hosts)
        self.lb = lb
        self.stats = stats

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if self.stats is not None:
            self.stats.lb_healthy_panic += 1
        return self.lb.pick(hash_key, attempt)


class LocalityBalancer(LoadBalancer):
    """Localities by effective weight with Envoy's EDF schedule (earliest deadline first,
    deadline += 1 / weight), then the cluster's lb_policy within the locality."""

    def __init__(self, entries: list[tuple[float, LoadBalancer]],
                 rng: random.Random | None = None) -> None:
        super().__init__([h for _, lb in entries for h in lb.hosts])
        self.balancers = [lb for _, lb in entries]
        self.steps = [1.0 / w for w, _ in entries]
        self.queue: list[tuple[float, int, int]] = [(step, i, i) for i, step in enumerate(self.steps)]
        heapq.heapify(self.queue)
        self.order = len(entries)
        # Start at a random point of the schedule, as Envoy's createWithPicks, so that a
        # fleet of proxies does not send its first requests to the same locality.
        for _ in range((rng or random).randrange(max(1, 2 * len(entries)))):
            self.next_index()

    def next_index(self) -> int:
        deadline, _, i = heapq.heappop(self.queue)
        self.order += 1
        heapq.heappush(self.queue, (deadline + self.steps[i], self.order, i))
        return i

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        return self.balancers[self.next_index()].pick(hash_key, attempt)


# --- building -----------------------------------------------------------------------------

def build(config: model.Cluster, hosts: list[Host],
          policy: model.AssignmentPolicy = model.DEFAULT_ASSIGNMENT_POLICY,
          locality_weights: dict[tuple[int, model.Locality], int] | None = None,
          stats: ClusterStats | None = None,
          rand: Callable[[], float] = random.random) -> LoadBalancer:
    """The balancer that picks among ``hosts`` as Envoy would.  ``locality_weights``: each
    (priority, locality)'s load_balancing_weight (used with locality_weighted_lb)."""
    levels: list[list[Host]] = [[] for _ in range(1 + max((h.priority for h in hosts), default=0))]
    for h in hosts:
        levels[h.priority].append(h)
    load = priority_load([LevelCounts.of(level) for level in levels],
                         policy.overprovisioning_factor,
                         panic_percent(config.healthy_panic_threshold),
                         policy.weighted_priority_health)
    # Consistent-hashing balancers: the hash key (not a random number) picks the priority,
    # each level is one balancer over its healthy hosts (all hosts in panic), and degraded
    # hosts are never in it.
    hashing = config.lb_policy in HASHING_POLICIES
    # choosePriority walks the healthy loads of every level first, then the degraded ones:
    # bucket b (0-99) belongs to the first level whose cumulative load exceeds b.
    healthy_table: list[LoadBalancer] = []
    degraded_table: list[LoadBalancer] = []
    for i, level in enumerate(levels):
        if load.healthy[i] or load.degraded[i]:
            healthy, degraded = _level_balancers(config, i, level, load.panic[i], hashing,
                                                 policy.overprovisioning_factor,
                                                 locality_weights, stats)
            healthy_table += [healthy] * load.healthy[i]
            degraded_table += [degraded] * load.degraded[i]
    table = healthy_table + degraded_table
    assert len(table) == 100, load
    first = table[0]
    if all(entry is first for entry in table):
        return first                # one balancer takes everything: no per-pick overhead
    return PrioritySelector(hosts, table, hashing, rand)


def _level_balancers(config: model.Cluster, priority: int, level: list[Host], panic: bool,
                     hashing: bool, factor: int,
                     locality_weights: dict[tuple[int, model.Locality], int] | None,
                     stats: ClusterStats | None) -> tuple[LoadBalancer, LoadBalancer]:
    """The balancers for a pick of this level's healthy load and of its degraded load."""
    if panic:
        lb: LoadBalancer = PanicBalancer(build_lb(config, level), stats)
        return lb, lb
    healthy = [h for h in level if h.healthy]
    if hashing:
        lb = build_lb(config, healthy)
        return lb, lb
    degraded = [h for h in level if h.degraded]
    healthy_lb = degraded_lb = None
    if config.locality_weighted_lb:
        weights = locality_weights or {}
        healthy_lb = _by_locality(config, priority, level, healthy, weights, factor)
        degraded_lb = _by_locality(config, priority, level, degraded, weights, factor)
    return (healthy_lb or build_lb(config, healthy), degraded_lb or build_lb(config, degraded))


def _by_locality(config: model.Cluster, priority: int, level: list[Host], eligible: list[Host],
                 weights: dict[tuple[int, model.Locality], int],
                 factor: int) -> LoadBalancer | None:
    """Envoy's locality scheduler over ``eligible`` (healthy or degraded) hosts: a locality's
    effective weight is its weight x min(1, factor x eligible / hosts).  None when no
    locality has a positive effective weight: Envoy then uses the level's eligible hosts."""
    if not eligible:
        return None
    every: dict[model.Locality, list[Host]] = {}
    for h in level:
        every.setdefault(_locality(h), []).append(h)
    chosen: dict[model.Locality, list[Host]] = {}
    for h in eligible:
        chosen.setdefault(_locality(h), []).append(h)
    entries: list[tuple[float, LoadBalancer]] = []
    # Envoy orders localities by (region, zone, sub_zone); only EDF tie-breaks depend on it.
    for loc in sorted(every, key=lambda x: (x.region, x.zone, x.sub_zone)):
        members = every[loc]
        count = sum(1 for h in members if not excluded(h))
        weight = weights.get((priority, loc), 0)
        picked = chosen.get(loc, [])
        if count == 0 or weight == 0 or not picked:
            continue
        effective = weight * min(1.0, factor / 100.0 * len(picked) / count)
        entries.append((effective, build_lb(config, picked)))
    if not entries:
        return None
    if len(entries) == 1:
        return entries[0][1]
    return LocalityBalancer(entries)


def _locality(host: Host) -> model.Locality:
    loc = host.locality
    return loc if isinstance(loc, model.Locality) else model.NO_LOCALITY


def locality_weights(endpoints: Sequence[model.Endpoint]) -> dict[tuple[int, model.Locality], int]:
    """(priority, locality) -> load_balancing_weight, from a load assignment's endpoints."""
    return {(e.priority, e.locality): e.locality_weight for e in endpoints if e.locality_weight}
