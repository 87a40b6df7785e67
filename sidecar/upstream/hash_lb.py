"""Consistent-hashing load balancers: RING_HASH (ketama) and MAGLEV, as Envoy 1.40 builds them.

Same host keys (the endpoint's envoy.lb hash_key metadata, else the hostname with
consistent_hashing_lb_config.use_hostname_for_hashing, else ``address:port``), same
hashes (xxHash64, or MurmurHash2 for a ring that asks for it), same weighting and
same table fill order as Envoy's RingHashLoadBalancer and MaglevTable, so a request
hash lands on the same host here as in Envoy.  The ring or table is built once per
host-set change (ClusterRuntime rebuilds its balancers); ``pick`` is a binary
search (ring) or one modulo (Maglev).  A request without a hash (no hash_policy,
or none of its policies applied) takes a random 64-bit hash, as Envoy does, so
it lands on a host with the probability of that host's share of the ring/table.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left

from config import model
from sidecar.upstream.hash_lb_stats import record_build
from sidecar.upstream.hashing import murmur2_64, xxhash64
from sidecar.upstream.host import Host
from sidecar.upstream.lb import LoadBalancer

# Envoy's ring hash caches nothing between builds; we keep the hashes of each host's
# ring points (they depend on its key only), so a rebuild after a health change
# (outlier ejection, active health check) costs a sort, not ~1000 hashes.
_POINT_CACHE: dict[tuple[str, bool], list[int]] = {}
_POINT_CACHE_LIMIT = 4096          # host keys; cleared whole when full


def host_key(host: Host, use_hostname: bool) -> str:
    """Envoy's HashingLoadBalancer::hashKey: the endpoint's envoy.lb hash_key metadata, else
    the hostname (use_hostname_for_hashing), else the address as Envoy prints it."""
    return host.hash_key or (host.hostname if use_hostname else host.label)


def _normalized_weights(hosts: list[Host]) -> list[float]:
    # As Envoy's normalizeHostWeights (no locality weighting): weight * 1.0 / sum.
    total = sum(h.weight for h in hosts)
    return [h.weight * 1.0 / total for h in hosts]


def _ring_points(key: str, count: int, murmur: bool) -> list[int]:
    """The hashes of ``key_0`` ... ``key_<count-1>``, the host's points on the ring."""
    cache_key = (key, murmur)
    points = _POINT_CACHE.get(cache_key)
    if points is None:
        if len(_POINT_CACHE) >= _POINT_CACHE_LIMIT:
            _POINT_CACHE.clear()
        points = _POINT_CACHE[cache_key] = []
    if len(points) < count:
        fn = murmur2_64 if murmur else xxhash64
        prefix = (key + "_").encode()
        points.extend(fn(prefix + str(i).encode()) for i in range(len(points), count))
    return points[:count]


class RingHash(LoadBalancer):
    """Envoy's RingHashLoadBalancer::Ring: every host gets points in proportion to its
    weight (the lightest host gets ceil(min_weight * minimum_ring_size), the ring is
    capped at maximum_ring_size), a point of host K being hash("K_<i>"); a request
    hash goes to the first point at or after it, wrapping to the first point."""

    def __init__(self, hosts: list[Host], config: model.Cluster,
                 rng: random.Random | None = None) -> None:
        super().__init__(hosts)
        self.rng = rng or random.Random()
        self.hashes: list[int] = []
        self.ring: list[Host] = []
        self.size = 0
        self.min_hashes_per_host = 0
        self.max_hashes_per_host = 0
        if not hosts:
            return
        weights = _normalized_weights(hosts)
        min_weight = min(weights)
        scale = min(math.ceil(min_weight * config.ring_hash_minimum_ring_size) / min_weight,
                    float(config.ring_hash_maximum_ring_size))
        murmur = config.ring_hash_function == "MURMUR_HASH_2"
        use_hostname = config.use_hostname_for_hashing
        points: list[tuple[int, int]] = []
        current = target = 0.0
        counts = []
        for index, (host, weight) in enumerate(zip(hosts, weights)):
            # Running sums over the whole host set, as Envoy: fractional shares add up.
            target += scale * weight
            # Envoy adds points while current < target, current counting whole points.
            count = max(math.ceil(target) - int(current), 0)
            current += count
            counts.append(count)
            points.extend((h, index) for h in _ring_points(host_key(host, use_hostname),
                                                           count, murmur))
        points.sort()
        self.hashes = [p[0] for p in points]
        self.ring = [hosts[p[1]] for p in points]
        self.size = math.ceil(scale)
        self.min_hashes_per_host = min(counts)
        self.max_hashes_per_host = max(counts)
        record_build(config.name, (self.max_hashes_per_host, self.min_hashes_per_host, self.size))

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        ring = self.ring
        if not ring:
            return None
        if hash_key is None:
            hash_key = self.rng.getrandbits(64)
        # Envoy's ketama search: the first point >= hash, else the first point.
        index = bisect_left(self.hashes, hash_key)
        if index == len(ring):
            index = 0
        if attempt:
            # A retry that must avoid the hosts tried: the attempt-th next point (Envoy).
            index = (index + attempt) % len(ring)
        return ring[index]


# Maglev tables are costly to fill in Python (~M log M probes); a host set that flips
# back (an ejected host returns) gets its earlier table again.
_TABLE_CACHE: dict[tuple[object, ...], list[int]] = {}
_TABLE_CACHE_LIMIT = 8


class Maglev(LoadBalancer):
    """Envoy's OriginalMaglevTable (the Maglev paper's listing 1, weighted): hosts sorted
    by key, host K starting at xxHash64(K) % M and stepping by xxHash64(K, seed 1) %
    (M - 1) + 1; each round, a host whose weight allows it takes its next free slot.
    A request hash picks slot hash % M."""

    def __init__(self, hosts: list[Host], config: model.Cluster,
                 rng: random.Random | None = None) -> None:
        super().__init__(hosts)
        self.rng = rng or random.Random()
        self.table_size = size = config.maglev_table_size
        self.modulus = size
        self.table: list[Host] = []
        self.min_entries_per_host = 0
        self.max_entries_per_host = 0
        if not hosts:
            return
        if len(hosts) == 1:
            # Every slot would be this host: no table to fill.
            self.table = list(hosts)
            self.modulus = 1
            self.min_entries_per_host = self.max_entries_per_host = 1
            record_build(config.name, (1, 1))
            return
        use_hostname = config.use_hostname_for_hashing
        weights = _normalized_weights(hosts)
        # Sorted by key: the fill order must not depend on the order hosts came in.
        entries = sorted(((host_key(h, use_hostname), h, w) for h, w in zip(hosts, weights)),
                         key=lambda e: e[0])
        keys = tuple((e[0], e[2]) for e in entries)
        cache_key = (size, keys)
        slots = _TABLE_CACHE.get(cache_key)
        if slots is None:
            slots = _fill(entries, size)
            if len(_TABLE_CACHE) >= _TABLE_CACHE_LIMIT:
                _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
            _TABLE_CACHE[cache_key] = slots
        ordered = [e[1] for e in entries]
        self.table = [ordered[i] for i in slots]
        counts = [0] * len(ordered)
        for i in slots:
            counts[i] += 1
        self.min_entries_per_host = min(counts)
        self.max_entries_per_host = max(counts)
        record_build(config.name, (self.max_entries_per_host, self.min_entries_per_host))

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        table = self.table
        if not table:
            return None
        if hash_key is None:
            hash_key = self.rng.getrandbits(64)
        if attempt:
            # Envoy flips most bits of the hash for each retry attempt.
            hash_key ^= (0xFFFFFFFFFFFFFFFF - attempt + 1)
        return table[hash_key % self.modulus]


def _fill(entries: list[tuple[str, Host, float]], size: int) -> list[int]:
    """The Maglev table as indexes into ``entries``."""
    count = len(entries)
    offsets = []
    skips = []
    for key, _, _ in entries:
        data = key.encode()
        offsets.append(xxhash64(data) % size)
        skips.append(xxhash64(data, 1) % (size - 1) + 1)
    weights = [e[2] for e in entries]
    max_weight = max(weights)
    targets = [0.0] * count
    positions = offsets[:]            # (offset + skip * next) % size, kept incrementally
    table = [-1] * size
    filled = 0
    iteration = 1
    while filled < size:
        for i in range(count):
            if filled >= size:
                break
            if iteration * weights[i] < targets[i]:
                continue
            targets[i] += max_weight
            c = positions[i]
            skip = skips[i]
            while table[c] >= 0:
                c += skip
                if c >= size:
                    c -= size
            table[c] = i
            c += skip
            positions[i] = c - size if c >= size else c
            filled += 1
        iteration += 1
    return table


class BoundedLoad(LoadBalancer):
    """Envoy's BoundedLoadHashingLoadBalancer (hash_balance_factor; "consistent hashing with
    bounded loads", arXiv 1608.01350): a host already serving more than its weighted share
    of hash_balance_factor% of the cluster's active requests passes the request on to the
    first host that is not, in an order shuffled by a Mersenne Twister seeded with the
    hash (the same hash, the same order), else to the least overloaded one."""

    def __init__(self, table: RingHash | Maglev, hosts: list[Host], factor: int,
                 rng: random.Random | None = None) -> None:
        super().__init__(hosts)
        self.table = table
        self.factor = factor
        self.rng = rng or random.Random()
        self.weights = _normalized_weights(hosts) if hosts else []
        self.weight_of = {id(h): w for h, w in zip(hosts, self.weights)}

    def overload(self, host: Host, weight: float) -> float:
        """Envoy's hostOverloadFactor: the host's active requests over its slots."""
        # The cluster's upstream_rq_active, as Envoy: the host's pool knows its cluster (the
        # circuit breaker it checks); a host without one counts this balancer's hosts.
        cluster = getattr(host.pool, "breaker", None)
        overall = (cluster.stats.upstream_rq_active if cluster is not None
                   else sum(h.active_requests for h in self.hosts))
        total_slots = ((overall + 1) * self.factor + 99) // 100
        slots = max(math.ceil(total_slots * weight), 1)
        return host.active_requests / slots

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if hash_key is None:
            hash_key = self.rng.getrandbits(64)     # one random hash for both uses, as Envoy
        host = self.table.pick(hash_key, attempt)
        if host is None:
            return None
        overload = self.overload(host, self.weight_of[id(host)])
        if overload <= 1.0:
            return host
        mt = _mt19937(hash_key)
        order = list(range(len(hosts)))
        least, least_overload = host, overload
        for i in range(len(hosts)):
            # Fisher-Yates as Envoy's: j uniform in [0, n - i) by division of a 32-bit draw.
            k = len(hosts) - i
            bucket = 0x100000000 // k
            j = k
            while j >= k:
                j = mt.getrandbits(32) // bucket
            order[i], order[i + j] = order[i + j], order[i]
            alt = hosts[order[i]]
            if alt is host:
                continue
            overload = self.overload(alt, self.weights[order[i]])
            if overload <= 1.0:
                return alt
            if least_overload > overload:
                least, least_overload = alt, overload
        return least


def _mt19937(seed: int) -> random.Random:
    """A Python Random in the state of C++'s std::mt19937(seed) (init_genrand on the low
    32 bits): getrandbits(32) then draws what the C++ engine's operator() returns."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        prev = state[-1]
        state.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, (*state, 624), None))
    return rng
