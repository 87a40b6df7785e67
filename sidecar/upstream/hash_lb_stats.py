"""cluster.<name>.ring_hash_lb.* and maglev_lb.*: the gauges of the consistent-hashing
balancers (hash_lb.py), with Envoy's names.

Envoy sets them each time it builds a ring / table over a non-empty host set (the
last build wins).  Builds record their figures here by cluster name; the cluster's
stats scope reads them when /stats is rendered.  (Kept out of hash_lb.py, which is
compiled with the hot path, because these scopes subclass the interpreted Scope.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from config import model
from sidecar.stats import Scope

_BUILT: dict[str, tuple[int, ...]] = {}


def record_build(cluster: str, values: tuple[int, ...]) -> None:
    _BUILT[cluster] = values


class RingHashLbStats(Scope):
    __slots__ = ()
    STATS: ClassVar[tuple[str, ...]] = ("max_hashes_per_host", "min_hashes_per_host", "size")
    PROM_PREFIX = "envoy_cluster_ring_hash_lb_"
    DOTTED_PREFIX = "cluster."
    DOTTED_SUFFIX = "ring_hash_lb."
    LABEL = "envoy_cluster_name"

    def values(self) -> Iterator[tuple[str, int, bool]]:
        built = _BUILT.get(self.name) or (0,) * len(self.STATS)
        for stat, value in zip(self.STATS, built):
            yield stat, value, False


class MaglevLbStats(RingHashLbStats):
    __slots__ = ()
    STATS = ("max_entries_per_host", "min_entries_per_host")
    PROM_PREFIX = "envoy_cluster_maglev_lb_"
    DOTTED_SUFFIX = "maglev_lb."


def hash_lb_stats(config: model.Cluster) -> Scope | None:
    """The cluster's ring_hash_lb / maglev_lb gauges, for a RING_HASH / MAGLEV cluster."""
    if config.lb_policy == "RING_HASH":
        return RingHashLbStats(config.name)
    if config.lb_policy == "MAGLEV":
        return MaglevLbStats(config.name)
    return None
