"""Load balancers: ROUND_ROBIN (weighted), RANDOM (weighted), LEAST_REQUEST (power of two choices).

Each is built over the current healthy hosts of a cluster and rebuilt when the
host set changes, so ``pick()`` is O(1) or O(choice_count).
"""

from __future__ import annotations

import random
from itertools import accumulate
from bisect import bisect_right

from config import model
from sidecar.upstream.host import Host


class LoadBalancer:
    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts

    def pick(self, hash_key: int | None = None) -> Host | None:
        """The next host; ``hash_key`` is the route's hash_policy result (used by the
        consistent-hashing balancers only; None when the route has no hash policy)."""
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

    def pick(self, hash_key: int | None = None) -> Host | None:
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

    def pick(self, hash_key: int | None = None) -> Host | None:
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

    def pick(self, hash_key: int | None = None) -> Host | None:
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


def build_lb(config: model.Cluster, hosts: list[Host]) -> LoadBalancer:
    """The cluster's lb_policy over ``hosts``."""
    policy = config.lb_policy
    if policy == "RANDOM":
        return Random(hosts)
    if policy == "LEAST_REQUEST":
        return LeastRequest(hosts, config.least_request_choice_count)
    return RoundRobin(hosts)
