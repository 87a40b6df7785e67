"""Load balancers: ROUND_ROBIN (weighted), RANDOM (weighted), LEAST_REQUEST (power of two choices);
RING_HASH and MAGLEV live in hash_lb.py.

Each is built over the current healthy hosts of a cluster and rebuilt when the
host set changes, so ``pick()`` is O(1) or O(choice_count).
"""

from __future__ import annotations

import random
from typing import Any
from itertools import accumulate
from bisect import bisect_right

from config import model
from sidecar.upstream.host import Host


class LoadBalancer:
    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        """The next host; ``hash_key`` is the route's hash_policy result and ``attempt`` the
        host re-selection of a retry avoiding previous hosts (both used by the
        consistent-hashing balancers only: the others pick afresh each time)."""
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    """Equal weights: plain rotation.  Unequal: smooth weighted round robin.

    Envoy uses an EDF scheduler for unequal weights; smooth WRR gives the same
    long-run proportions with the same interleaving property (no bursts to one
    host).  Like Envoy, the rotation starts at a random host so a fleet of
    proxies doesn't hit the first host together.
    """

    def __init__(self, hosts: list[Host], rng: random.Random | None = None) -> None:
        super().__init__(hosts)
        self.index = (rng or random).randrange(len(hosts)) if hosts else 0
        self.weighted = len({h.weight for h in hosts}) > 1
        self.current = [0] * len(hosts)
        self.total = sum(h.weight for h in hosts)
        if self.weighted:
            # Start somewhere random in the weighted cycle, as Envoy's EDF scheduler does.
            for _ in range((rng or random).randrange(min(self.total, 1000))):
                self.pick()

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if not self.weighted:
            self.index = (self.index + 1) % len(hosts)
            return hosts[self.index]
        best = 0
        current = self.current
        for i, h in enumerate(hosts):
            current[i] += h.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return hosts[best]


class Random(LoadBalancer):
    def __init__(self, hosts: list[Host], rng: random.Random | None = None) -> None:
        super().__init__(hosts)
        self.rng = rng or random.Random()
        self.cumulative = list(accumulate(h.weight for h in hosts))

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if not self.hosts:
            return None
        x = self.rng.random() * self.cumulative[-1]
        return self.hosts[bisect_right(self.cumulative, x)]


class LeastRequest(LoadBalancer):
    """Pick ``choice_count`` hosts at random (by weight), keep the one with fewest active requests.

    With unequal weights Envoy compares weight / (active + 1); we do the same.
    """

    def __init__(self, hosts: list[Host], choice_count: int = 2,
                 rng: random.Random | None = None) -> None:
        super().__init__(hosts)
        self.choice_count = choice_count
        self.random = Random(hosts, rng)
        self.weighted = len({h.weight for h in hosts}) > 1

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if not self.hosts:
            return None
        best = self.random.pick()
        assert best is not None
        for _ in range(self.choice_count - 1):
            other = self.random.pick()
            assert other is not None
            if self.weighted:
                if other.weight / (other.active_requests + 1) > best.weight / (best.active_requests + 1):
                    best = other
            elif other.active_requests < best.active_requests:
                best = other
        return best


# The consistent-hashing policies: Envoy's "thread aware" balancers, the only ones that take
# a route's hash (so the only ones for which the router computes it).
HASHING_POLICIES = frozenset(("RING_HASH", "MAGLEV"))


def build_lb(config: model.Cluster, hosts: list[Host]) -> LoadBalancer:
    """The cluster's lb_policy over ``hosts``."""
    policy = config.lb_policy
    if policy == "RANDOM":
        return Random(hosts)
    if policy == "LEAST_REQUEST":
        return LeastRequest(hosts, config.least_request_choice_count)
    if policy in HASHING_POLICIES:
        # Imported here: hash_lb subclasses LoadBalancer from this module.
        from sidecar.upstream.hash_lb import BoundedLoad, Maglev, RingHash
        table: RingHash | Maglev = (RingHash(hosts, config) if policy == "RING_HASH"
                                    else Maglev(hosts, config))
        if config.hash_balance_factor:
            return BoundedLoad(table, hosts, config.hash_balance_factor)
        return table
    return RoundRobin(hosts)


class ClusterProvided(LoadBalancer):
    """lb_policy CLUSTER_PROVIDED: the cluster picks (ORIGINAL_DST: sidecar/upstream/original_dst.py,
    whose ``pick`` takes the host key the router passes as ``hash_key``)."""

    def __init__(self, picker: Any) -> None:
        super().__init__([])
        self.picker = picker

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        return self.picker(hash_key, attempt)  # type: ignore[no-any-return]
