"""Admin /clusters: every cluster's circuit breakers and hosts as Envoy 1.40 lists them.

Text (``cluster::host::stat::value`` lines) or, with ``format=json``, Envoy's
ClusterStatuses JSON (proto3 JSON: zero values left out).  Per-host stats come
from the host's connection pool (sidecar/upstream/pool.py), health flags from
the host's EDS status and the flags the active health checker and outlier
detection set.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.upstream.host import (ACTIVE_HC_TIMEOUT, DEGRADED_ACTIVE_HC, EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
                                   FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK)

# Envoy's defaults: sidecar keeps the HIGH priority thresholds only as these (every
# request is DEFAULT priority).
HIGH_PRIORITY = (("max_connections", 1024), ("max_pending_requests", 1024),
                 ("max_requests", 1024), ("max_retries", 3))
COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
GAUGES = ("cx_active", "rq_active", "rq_pending_active")
EDS_FAILED = ("UNHEALTHY", "DRAINING", "TIMEOUT")


def render(clusters: dict[str, Any], as_json: bool) -> str:
    runtimes = list(clusters.values())     # the order they were added, as Envoy's listing
    if as_json:
        return json.dumps({"cluster_statuses": [cluster_json(c) for c in runtimes]}, indent=1)
    return "".join(line for c in runtimes for line in cluster_text(c))


def host_stats(host: Any) -> dict[str, int]:
    pool = host.pool
    counters = {name: getattr(pool, name, 0) for name in COUNTERS}
    cx_active = len(pool.busy) + len(pool.idle) if pool is not None else 0
    gauges = {"cx_active": cx_active, "rq_active": host.active_requests,
              "rq_pending_active": getattr(pool, "rq_pending_active", 0)}
    return counters | gauges


def health_flags(host: Any) -> str:
    """Envoy's HostUtility::healthFlagsToString."""
    status, failed = host.health_status, host.failed
    flags = []
    if failed & FAILED_ACTIVE_HC:
        flags.append("/failed_active_hc")
    if failed & FAILED_OUTLIER_CHECK:
        flags.append("/failed_outlier_check")
    if status in EDS_FAILED:
        flags.append("/failed_eds_health")
    if failed & DEGRADED_ACTIVE_HC:
        flags.append("/degraded_active_hc")
    if status == "DEGRADED":
        flags.append("/degraded_eds_health")
    if failed & EXCLUDED_VIA_IMMEDIATE_HC_FAIL:
        flags.append("/excluded_via_immediate_hc_fail")
    if failed & ACTIVE_HC_TIMEOUT:
        flags.append("/active_hc_timeout")
    if status == "DRAINING":
        flags.append("/eds_status_draining")
    return "".join(flags) or "healthy"


def success_rates(host: Any) -> tuple[float, float]:
    """The outlier detector's last success rates (external, local origin); -1 when none."""
    outlier = host.outlier
    if outlier is None:
        return -1.0, -1.0
    return (getattr(outlier, "success_rate", -1.0), getattr(outlier, "local_origin_success_rate", -1.0))


def locality_of(host: Any) -> tuple[str, str, str]:
    locality = host.locality
    if locality is None:
        return "", "", ""
    return (getattr(locality, "region", ""), getattr(locality, "zone", ""),
            getattr(locality, "sub_zone", ""))


def _rate(value: float) -> str:
    return "-1" if value < 0 else f"{value:g}"


def cluster_text(cluster: Any) -> list[str]:
    name = cluster.name
    c = cluster.config
    out = [f"{name}::observability_name::{name}\n"]
    outlier = getattr(cluster, "outlier", None)
    if outlier is not None:
        # The last success-rate pass's (average, ejection threshold), -1 when none ran.
        for kind, (average, threshold) in (("", outlier.success_rate_stats),
                                           ("local_origin_", outlier.local_origin_success_rate_stats)):
            out.append(f"{name}::outlier::{kind}success_rate_average::{_rate(average)}\n")
            out.append(f"{name}::outlier::{kind}success_rate_ejection_threshold::{_rate(threshold)}\n")
    for key in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        out.append(f"{name}::default_priority::{key}::{getattr(c, key)}\n")
    for key, value in HIGH_PRIORITY:
        out.append(f"{name}::high_priority::{key}::{value}\n")
    out.append(f"{name}::added_via_api::{str(cluster.added_via_api).lower()}\n")
    for host in cluster.hosts:
        prefix = f"{name}::{host.label}::"
        stats = host_stats(host)
        for stat in sorted(stats):
            out.append(f"{prefix}{stat}::{stats[stat]}\n")
        region, zone, sub_zone = locality_of(host)
        rate, local_rate = success_rates(host)
        out += [f"{prefix}hostname::{host.hostname}\n",
                f"{prefix}health_flags::{health_flags(host)}\n",
                f"{prefix}weight::{host.weight}\n",
                f"{prefix}region::{region}\n", f"{prefix}zone::{zone}\n",
                f"{prefix}sub_zone::{sub_zone}\n",
                f"{prefix}canary::false\n",
                f"{prefix}priority::{host.priority}\n",
                f"{prefix}success_rate::{_rate(rate)}\n",
                f"{prefix}local_origin_success_rate::{_rate(local_rate)}\n"]
    return out


def host_json(host: Any) -> dict[str, Any]:
    stats = host_stats(host)
    stat_list: list[dict[str, Any]] = []
    for stat in COUNTERS:
        stat_list.append({"name": stat, **({"value": str(stats[stat])} if stats[stat] else {})})
    for stat in GAUGES:
        stat_list.append({"type": "GAUGE", "name": stat,
                          **({"value": str(stats[stat])} if stats[stat] else {})})
    status = host.health_status
    health: dict[str, Any] = {"eds_health_status": "HEALTHY" if status == "UNKNOWN" else status}
    if host.failed & FAILED_ACTIVE_HC:
        health["failed_active_health_check"] = True
    if host.failed & FAILED_OUTLIER_CHECK:
        health["failed_outlier_check"] = True
    if host.failed & DEGRADED_ACTIVE_HC:
        health["failed_active_degraded_check"] = True
    if host.failed & EXCLUDED_VIA_IMMEDIATE_HC_FAIL:
        health["excluded_via_immediate_hc_fail"] = True
    if host.failed & ACTIVE_HC_TIMEOUT:
        health["active_hc_timeout"] = True
    out: dict[str, Any] = {
        "address": {"socket_address": {"address": host.address, "port_value": host.port}},
        "stats": stat_list, "health_status": health, "weight": host.weight}
    if host.hostname:
        out["hostname"] = host.hostname
    region, zone, sub_zone = locality_of(host)
    locality = {k: v for k, v in (("region", region), ("zone", zone), ("sub_zone", sub_zone)) if v}
    if locality:
        out["locality"] = locality
    if host.priority:
        out["priority"] = host.priority
    rate, local_rate = success_rates(host)
    if rate >= 0:
        out["success_rate"] = {"value": rate}
    if local_rate >= 0:
        out["local_origin_success_rate"] = {"value": local_rate}
    return out


def cluster_json(cluster: Any) -> dict[str, Any]:
    c = cluster.config
    default = {key: getattr(c, key) for key in
               ("max_connections", "max_pending_requests", "max_requests", "max_retries")}
    out: dict[str, Any] = {"name": cluster.name}
    if cluster.added_via_api:
        out["added_via_api"] = True
    out["host_statuses"] = [host_json(h) for h in cluster.hosts]
    out["circuit_breakers"] = {"thresholds": [default, {"priority": "HIGH", **dict(HIGH_PRIORITY)}]}
    out["observability_name"] = cluster.name
    return out
