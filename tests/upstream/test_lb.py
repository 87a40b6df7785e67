"""Load balancers of sidecar/upstream/lb.py, driven by a seeded random.Random (no sockets needed)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from config import model
from sidecar.upstream.host import Host
from sidecar.upstream.lb import LeastRequest, Random, RoundRobin, build_lb


def hosts(*weights: int) -> list[Host]:
    return [Host("10.0.0.%d" % (i + 1), 80, weight=w) for i, w in enumerate(weights)]


def cluster(policy: str, **fields) -> model.Cluster:
    return model.Cluster("c", lb_policy=policy, **fields)


def picks(lb, n: int) -> list[Host]:
    return [lb.pick() for _ in range(n)]


# --- ROUND_ROBIN -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_round_robin_equal_weights_visits_every_host_in_turn(seed):
    hs = hosts(1, 1, 1, 1)
    lb = RoundRobin(hs, random.Random(seed))
    seq = picks(lb, 12)
    # every window of len(hosts) consecutive picks holds each host exactly once
    for start in range(len(seq) - len(hs) + 1):
        assert set(map(id, seq[start:start + len(hs)])) == set(map(id, hs))
    # and the order is the configured rotation
    first = hs.index(seq[0])
    assert seq == [hs[(first + i) % len(hs)] for i in range(12)]


def test_round_robin_start_depends_on_the_rng():
    """Like Envoy, the rotation starts at a random host (so a fleet doesn't hit host 0 together)."""
    hs = hosts(*[1] * 8)
    starts = {RoundRobin(hs, random.Random(seed)).pick().address for seed in range(40)}
    assert len(starts) > 1


def test_round_robin_weighted_start_depends_on_the_rng():
    """With unequal weights too: Envoy builds its EDF schedule with a random number of initial
    picks (EdfScheduler::createWithPicks), so proxies started together don't all send their first
    request to the same host.  Observed with envoy 1.40 on weights a=1, b=3 over 8 restarts: first
    picks b, b, a, a, b, b, b, a."""
    hs = hosts(1, 3)
    starts = {RoundRobin(hs, random.Random(seed)).pick().address for seed in range(40)}
    assert starts == {h.address for h in hs}


@pytest.mark.parametrize("weights", [(3, 1), (5, 2, 1), (1, 4, 2, 3), (10, 1)])
def test_round_robin_unequal_weights_exact_over_a_full_cycle(weights):
    hs = hosts(*weights)
    lb = RoundRobin(hs, random.Random(1))
    total = sum(weights)
    for _ in range(3):   # every full cycle, not just the first one
        seen = Counter(h.address for h in picks(lb, total))
        assert seen == {h.address: h.weight for h in hs}


@pytest.mark.parametrize("weights", [(3, 1, 1), (1, 1, 5), (4, 1, 1, 2), (1, 9, 1)])
def test_round_robin_interleaves_weight_one_hosts(weights):
    """Never two picks in a row of a weight-1 host when another host also has weight 1."""
    hs = hosts(*weights)
    lb = RoundRobin(hs, random.Random(2))
    seq = picks(lb, sum(weights) * 4)
    for prev, cur in zip(seq, seq[1:]):
        if prev is cur:
            assert prev.weight > 1, f"weight-1 host {prev.address} picked twice in a row: {seq}"


def test_round_robin_no_burst_to_the_heavy_host():
    """Smooth WRR (like Envoy's EDF) spreads the light host out; 3:1 is never 'a a a b' bursts > 3."""
    hs = hosts(3, 1)
    seq = [h.address for h in picks(RoundRobin(hs, random.Random(0)), 40)]
    run = longest = 0
    for prev, cur in zip(seq, seq[1:]):
        run = run + 1 if prev == cur else 0
        longest = max(longest, run + 1)
    assert longest <= 3


# --- RANDOM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [(1, 1), (3, 1), (1, 2, 7)])
def test_random_proportions_follow_weights(weights):
    hs = hosts(*weights)
    lb = Random(hs, random.Random(1234))
    n = 20_000
    seen = Counter(h.address for h in picks(lb, n))
    total = sum(weights)
    for h in hs:
        expected = n * h.weight / total
        assert abs(seen[h.address] - expected) < 0.05 * n, (seen, weights)
    assert set(seen) == {h.address for h in hs}


def test_random_is_reproducible_with_a_seed():
    hs = hosts(1, 1, 1)
    a = [h.address for h in picks(Random(hs, random.Random(7)), 50)]
    b = [h.address for h in picks(Random(hs, random.Random(7)), 50)]
    assert a == b and len(set(a)) == 3


# --- LEAST_REQUEST -----------------------------------------------------------------------------

def test_least_request_prefers_fewer_active_requests():
    hs = hosts(1, 1)
    busy, idle = hs
    busy.active_requests = 5
    idle.active_requests = 0
    lb = LeastRequest(hs, choice_count=2, rng=random.Random(3))
    seen = Counter(h.address for h in picks(lb, 2000))
    # P(both choices are the busy host) = 1/4, so the idle host gets ~3/4
    assert seen[idle.address] > seen[busy.address] * 2
    assert abs(seen[idle.address] / 2000 - 0.75) < 0.05


def test_least_request_with_many_choices_always_finds_the_idle_host():
    hs = hosts(1, 1, 1, 1)
    for h in hs:
        h.active_requests = 3
    hs[2].active_requests = 0
    lb = LeastRequest(hs, choice_count=50, rng=random.Random(4))
    assert all(h is hs[2] for h in picks(lb, 200))


def test_least_request_equal_load_spreads_evenly():
    hs = hosts(1, 1, 1)
    lb = LeastRequest(hs, rng=random.Random(5))
    seen = Counter(h.address for h in picks(lb, 3000))
    assert all(abs(seen[h.address] - 1000) < 150 for h in hs), seen


def test_least_request_unequal_weights_compares_weight_over_active_plus_one():
    heavy, light = hosts(4, 1)
    # heavy: 4 / (2 + 1) = 1.33 > light: 1 / (0 + 1) = 1  -> heavy wins despite more active requests
    heavy.active_requests = 2
    light.active_requests = 0
    lb = LeastRequest([heavy, light], choice_count=50, rng=random.Random(6))
    assert all(h is heavy for h in picks(lb, 200))
    # heavy: 4 / (4 + 1) = 0.8 < light: 1 / (0 + 1) = 1  -> light wins
    heavy.active_requests = 4
    assert all(h is light for h in picks(lb, 200))


def test_least_request_choice_count_one_is_weighted_random():
    hs = hosts(3, 1)
    hs[0].active_requests = 100
    lb = LeastRequest(hs, choice_count=1, rng=random.Random(8))
    seen = Counter(h.address for h in picks(lb, 8000))
    assert abs(seen[hs[0].address] / 8000 - 0.75) < 0.03


# --- empty host set, factory ---------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: RoundRobin([], random.Random(0)),
    lambda: Random([], random.Random(0)),
    lambda: LeastRequest([], rng=random.Random(0)),
    lambda: build_lb(cluster("ROUND_ROBIN"), []),
    lambda: build_lb(cluster("RANDOM"), []),
    lambda: build_lb(cluster("LEAST_REQUEST"), []),
])
def test_empty_host_list_picks_none(make):
    lb = make()
    assert lb.pick() is None
    assert lb.pick() is None


@pytest.mark.parametrize("policy,cls", [("ROUND_ROBIN", RoundRobin), ("RANDOM", Random),
                                        ("LEAST_REQUEST", LeastRequest)])
def test_build_lb_returns_the_policy(policy, cls):
    lb = build_lb(cluster(policy, least_request_choice_count=3), hosts(1, 1))
    assert type(lb) is cls
    assert lb.pick() is not None
    if cls is LeastRequest:
        assert lb.choice_count == 3


def test_single_host_always_picked():
    (h,) = hosts(5)
    for lb in (RoundRobin([h], random.Random(0)), Random([h], random.Random(0)),
               LeastRequest([h], rng=random.Random(0))):
        assert all(p is h for p in picks(lb, 10))
