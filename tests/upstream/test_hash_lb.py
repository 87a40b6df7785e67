"""RING_HASH and MAGLEV balancers: the rings and tables Envoy's own unit tests expect
(test/extensions/load_balancing_policies/{ring_hash,maglev}), weights, stability when a
host goes, retry attempts, and random picks without a hash."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from config import model
from sidecar.upstream.hash_lb import BoundedLoad, Maglev, RingHash
from sidecar.upstream.host import Host
from sidecar.upstream.lb import build_lb

MAX64 = 2 ** 64 - 1


def hosts(*ports: int, weights: list[int] | None = None, names: bool = False) -> list[Host]:
    return [Host("127.0.0.1", p, (weights or [1] * len(ports))[i],
                 hostname=str(p) if names else "") for i, p in enumerate(ports)]


def ring(hs: list[Host], **kw) -> RingHash:
    return RingHash(hs, model.Cluster("c", lb_policy="RING_HASH", **kw))


def maglev(hs: list[Host], **kw) -> Maglev:
    return Maglev(hs, model.Cluster("c", lb_policy="MAGLEV", **kw))


class FixedRandom(random.Random):
    def __init__(self, value: int) -> None:
        super().__init__()
        self.value = value

    def getrandbits(self, k: int) -> int:
        return self.value


# --- ring hash ------------------------------------------------------------------------

def test_ring_is_envoys_basic_ring():
    hs = hosts(90, 91, 92, 93, 94, 95)
    lb = ring(hs, ring_hash_minimum_ring_size=12)
    assert (lb.size, lb.min_hashes_per_host, lb.max_hashes_per_host) == (12, 2, 2)
    # Envoy's RingHashLoadBalancerTest.Basic, point by point.
    assert [(h.port, p) for h, p in zip(lb.ring, lb.hashes)] == [
        (94, 833437586790550860), (92, 928266305478181108), (90, 1033482794131418490),
        (95, 3551244743356806947), (93, 3851675632748031481), (91, 5583722120771150861),
        (91, 6311230543546372928), (93, 7700377290971790572), (95, 13144177310400110813),
        (92, 13444792449719432967), (94, 15516499411664133160), (90, 16117243373044804889)]
    assert lb.pick(0).port == 94
    assert lb.pick(MAX64).port == 94                       # past the last point: wraps
    assert lb.pick(3551244743356806947).port == 95         # exactly on a point
    assert lb.pick(3551244743356806948).port == 93
    lb.rng = FixedRandom(16117243373044804880)             # no hash: Envoy's random() value
    assert lb.pick(None).port == 90


def test_ring_with_murmur2_is_envoys():
    lb = ring(hosts(80, 81, 82, 83, 84, 85), ring_hash_minimum_ring_size=12,
              ring_hash_function="MURMUR_HASH_2")
    assert [h.port for h in lb.ring] == [85, 83, 84, 81, 82, 84, 81, 82, 83, 80, 85, 80]
    assert lb.hashes[0] == 1358027074129602068 and lb.hashes[-1] == 17613279263364193813
    assert lb.pick(0).port == 85 and lb.pick(MAX64).port == 85
    assert lb.pick(1358027074129602069).port == 83
    lb.rng = FixedRandom(10150910876324007730)
    assert lb.pick(None).port == 82


def test_ring_with_hostnames_is_envoys():
    # Envoy's BasicWithDoundedLoad ring (hostnames "90" ... "95").
    lb = ring(hosts(90, 91, 92, 93, 94, 95, names=True), ring_hash_minimum_ring_size=12,
              use_hostname_for_hashing=True)
    assert lb.hashes[0] == 1975508444536362413 and lb.ring[0].port == 95
    assert lb.pick(7225015537174310577).port == 92
    assert lb.pick(6803900775736438537).port == 93


def ketama(hashes: list[int], h: int) -> int:
    """Envoy's ring search, transcribed literally (signed indexes and all)."""
    lowp, highp = 0, len(hashes)
    while True:
        midp = (lowp + highp) // 2
        if midp == len(hashes):
            return 0
        midval = hashes[midp]
        midval1 = 0 if midp == 0 else hashes[midp - 1]
        if midval1 < h <= midval:
            return midp
        if midval < h:
            lowp = midp + 1
        else:
            highp = midp - 1
        if lowp > highp:
            return 0


def test_ring_search_is_ketamas():
    lb = ring(hosts(*range(100, 107)), ring_hash_minimum_ring_size=64)
    rng = random.Random(7)
    for h in [0, 1, MAX64, *lb.hashes, *(x + 1 for x in lb.hashes),
              *(rng.getrandbits(64) for _ in range(2000))]:
        assert lb.pick(h) is lb.ring[ketama(lb.hashes, h)], h


def test_ring_weights_and_sizes():
    lb = ring(hosts(1, 2, 3, weights=[1, 2, 3]))
    # The lightest host gets ceil(1/6 * 1024) = 171 points, the others in proportion.
    assert lb.size == 1026
    assert Counter(h.port for h in lb.ring) == {1: 171, 2: 342, 3: 513}
    capped = ring(hosts(1, 2, 3), ring_hash_minimum_ring_size=3000,
                  ring_hash_maximum_ring_size=300)
    assert len(capped.ring) == 300 and capped.min_hashes_per_host == 100


def test_ring_retry_attempt_takes_the_next_points():
    lb = ring(hosts(90, 91, 92, 93, 94, 95), ring_hash_minimum_ring_size=12)
    assert [lb.pick(0, attempt).port for attempt in range(4)] == [94, 92, 90, 95]
    assert lb.pick(MAX64, 12).port == 94                   # wraps around the ring


# --- maglev -------------------------------------------------------------------------------

def test_maglev_is_envoys_basic_table():
    hs = hosts(90, 91, 92, 93, 94, 95)
    lb = maglev(hs, maglev_table_size=7)
    assert [h.port - 90 for h in lb.table] == [2, 4, 0, 1, 5, 0, 3]
    assert (lb.min_entries_per_host, lb.max_entries_per_host) == (1, 2)
    assert [lb.pick(i).port - 90 for i in range(14)] == [2, 4, 0, 1, 5, 0, 3] * 2
    # The order hosts come in does not matter.
    shuffled = hs[:]
    random.Random(3).shuffle(shuffled)
    again = maglev(shuffled, maglev_table_size=7)
    assert [h.port for h in again.table] == [h.port for h in lb.table]


def test_maglev_with_hostnames_and_weights_is_envoys():
    named = maglev(hosts(90, 91, 92, 93, 94, 95, names=True), maglev_table_size=7,
                   use_hostname_for_hashing=True)
    assert [h.port - 90 for h in named.table] == [2, 5, 0, 3, 4, 1, 0]
    weighted = maglev(hosts(90, 91, weights=[1, 2]), maglev_table_size=17)
    assert [h.port - 90 for h in weighted.table] == [1, 0, 0, 1, 0, 1, 1, 0, 1,
                                                     1, 1, 1, 1, 0, 1, 0, 1]
    assert (weighted.min_entries_per_host, weighted.max_entries_per_host) == (6, 11)


def test_maglev_retry_attempts_flip_the_hash_as_envoy():
    lb = maglev(hosts(90, 91, 92, 93, 94, 95), maglev_table_size=7)
    # Envoy's BasicWithRetryHostPredicate: hash 10 -> :91, then :90, then :95.
    assert [lb.pick(10, attempt).port for attempt in range(3)] == [91, 90, 95]


def test_maglev_default_table_spreads_by_weight():
    lb = maglev(hosts(1, 2, 3, weights=[1, 1, 2]))
    counts = Counter(h.port for h in lb.table)
    assert sum(counts.values()) == 65537
    assert counts[3] == pytest.approx(65537 / 2, rel=0.01)
    assert counts[1] == pytest.approx(65537 / 4, rel=0.02)


def test_single_host_maglev_takes_every_hash():
    only = hosts(7)
    lb = maglev(only)
    assert {lb.pick(h) for h in (0, 1, 65536, MAX64, None)} == {only[0]}


# --- both ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [ring, maglev])
def test_removing_a_host_moves_mostly_its_own_keys(make):
    hs = hosts(*range(8000, 8010))
    before = make(hs)
    after = make([h for h in hs if h.port != 8003])
    rng = random.Random(11)
    keys = [rng.getrandbits(64) for _ in range(5000)]
    moved_other = 0
    for k in keys:
        old, new = before.pick(k), after.pick(k)
        if old.port == 8003:
            assert new.port != 8003
        elif old.port != new.port:
            moved_other += 1
    others = sum(1 for k in keys if before.pick(k).port != 8003)
    # The rest of the keys mostly stay put (the ring gives the remaining hosts a few more
    # points each to keep minimum_ring_size, so ~7% move there, as in Envoy).
    assert moved_other / others < 0.1


@pytest.mark.parametrize("make", [ring, maglev])
def test_no_hash_picks_at_random_over_every_host(make):
    hs = hosts(1, 2, 3)
    lb = make(hs)
    lb.rng = random.Random(5)
    assert Counter(lb.pick().port for _ in range(300)).keys() == {1, 2, 3}


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_build_lb_and_empty_host_sets(policy):
    lb = build_lb(model.Cluster("c", lb_policy=policy), [])
    assert lb.pick(5) is None and lb.pick() is None
    hs = hosts(1, 2)
    lb = build_lb(model.Cluster("c", lb_policy=policy), hs)
    assert type(lb) is (RingHash if policy == "RING_HASH" else Maglev)
    assert lb.pick(123) is lb.pick(123) and lb.pick(123) in hs


def test_envoy_lb_hash_key_metadata_replaces_the_address():
    # Envoy's BasicWithMetadataHashKey: metadata keys "90" ... "95" give the hostname table.
    hs = [Host("127.0.0.1", p, hash_key=str(p)) for p in range(90, 96)]
    assert [h.port - 90 for h in maglev(hs, maglev_table_size=7).table] == [2, 5, 0, 3, 4, 1, 0]
    # ... with or without use_hostname_for_hashing (metadata first).
    lb = ring(hs, ring_hash_minimum_ring_size=12, use_hostname_for_hashing=True)
    assert lb.hashes[0] == 1975508444536362413 and lb.ring[0].port == 95


def test_gauges_follow_the_last_build():
    from sidecar.upstream.hash_lb_stats import hash_lb_stats
    ring_stats = hash_lb_stats(model.Cluster("gauge-ring", lb_policy="RING_HASH"))
    maglev_stats = hash_lb_stats(model.Cluster("gauge-maglev", lb_policy="MAGLEV"))
    assert hash_lb_stats(model.Cluster("rr")) is None
    assert ring_stats is not None and maglev_stats is not None
    assert ring_stats.dotted_base == "cluster.gauge-ring.ring_hash_lb."
    assert list(ring_stats.values()) == [("max_hashes_per_host", 0, False),
                                         ("min_hashes_per_host", 0, False), ("size", 0, False)]
    RingHash(hosts(1, 2, 3, weights=[1, 2, 3]),
             model.Cluster("gauge-ring", lb_policy="RING_HASH"))
    assert [v for _, v, _ in ring_stats.values()] == [513, 171, 1026]
    RingHash([], model.Cluster("gauge-ring", lb_policy="RING_HASH"))     # empty: kept
    assert [v for _, v, _ in ring_stats.values()] == [513, 171, 1026]
    Maglev(hosts(1, 2, weights=[1, 2]), model.Cluster("gauge-maglev", lb_policy="MAGLEV",
                                                       maglev_table_size=17))
    assert list(maglev_stats.values()) == [("max_entries_per_host", 11, False),
                                           ("min_entries_per_host", 6, False)]
    assert maglev_stats.PROM_PREFIX == "envoy_cluster_maglev_lb_"


def test_ring_point_counts_follow_envoys_running_sums():
    rng = random.Random(3)
    for _ in range(30):
        weights = [rng.randint(1, 9) for _ in range(rng.randint(1, 8))]
        minimum = rng.choice([1, 7, 64, 1024])
        lb = ring(hosts(*range(1, len(weights) + 1), weights=weights),
                  ring_hash_minimum_ring_size=minimum)
        # Envoy's loop, transcribed: a point while current < target, over running sums.
        total = sum(weights)
        normalized = [w * 1.0 / total for w in weights]
        scale = min(math.ceil(min(normalized) * minimum) / min(normalized), float(8388608))
        current = target = 0.0
        expected = {}
        for port, w in enumerate(normalized, 1):
            target += scale * w
            count = 0
            while current < target:
                count += 1
                current += 1
            expected[port] = count
        got = Counter(h.port for h in lb.ring)
        assert {p: got.get(p, 0) for p in expected} == expected, weights


# --- bounded loads (hash_balance_factor) ------------------------------------------------------

def test_mt19937_is_the_cpp_engine():
    from sidecar.upstream.hash_lb import _mt19937
    engine = _mt19937(5489)                 # std::mt19937's default seed
    draws = [engine.getrandbits(32) for _ in range(10000)]
    assert draws[0] == 3499211612
    assert draws[-1] == 4123659995          # the C++ standard's check value


def test_bounded_load_keeps_the_hash_pick_until_a_host_is_overloaded():
    hs = hosts(90, 91, 92, 93, 94, 95, names=True)
    table = ring(hs, ring_hash_minimum_ring_size=12, use_hostname_for_hashing=True)
    lb = BoundedLoad(table, hs, 200)
    # Envoy's BasicWithDoundedLoad: no load, the ring's own picks.
    for key in (0, MAX64, 7225015537174310577, 6803900775736438537):
        assert lb.pick(key) is table.pick(key)


def test_bounded_load_spills_over_to_the_first_host_with_room():
    hs = hosts(1, 2, 3)
    table = maglev(hs, maglev_table_size=7)
    lb = BoundedLoad(table, hs, 100)
    primary = table.pick(42)
    # 2 active of 2 in the cluster: slots = ceil((2 + 1) * 100% / 3) = 1 < 2: overloaded.
    primary.active_requests = 2
    spill = lb.pick(42)
    assert spill is not primary and spill.active_requests == 0
    assert lb.pick(42) is spill                 # the same hash walks the same order
    # The walk skips overloaded hosts: with the spill target loaded too, the third host.
    others = [h for h in hs if h is not primary and h is not spill]
    primary.active_requests, spill.active_requests = 9, 9      # slots ceil(19 / 3) = 7
    assert lb.pick(42) is others[0]
    # Weighted slots: a heavy host takes more before it spills.
    heavy = hosts(1, 2, weights=[1, 9])
    weighted = BoundedLoad(ring(heavy), heavy, 100)
    heavy[1].active_requests = 4          # slots = ceil(5 * 0.9) = 5: not overloaded
    rng = random.Random(1)
    key = next(k for k in (rng.getrandbits(64) for _ in range(100))
               if weighted.table.pick(k) is heavy[1])
    assert weighted.pick(key) is heavy[1]


def test_build_lb_wraps_the_table_for_a_balance_factor():
    lb = build_lb(model.Cluster("c", lb_policy="MAGLEV", hash_balance_factor=150), hosts(1, 2))
    assert type(lb) is BoundedLoad and type(lb.table) is Maglev
    empty = build_lb(model.Cluster("c", lb_policy="MAGLEV", hash_balance_factor=150), [])
    assert empty.pick() is None
