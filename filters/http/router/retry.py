"""Envoy's retry decisions, as its router's RetryStateImpl makes them: which outcomes of
an upstream attempt are retried under a route's retry_policy, the jittered
exponential back-off between attempts, and the next host.

Pure functions and one small class: the router's coroutine path (Router.forward_retrying)
does the I/O.  Envoy 1.40 semantics:

- a response is retried on ``5xx`` (any status >= 500), ``gateway-error`` (502, 503,
  504), ``retriable-4xx`` (409), ``retriable-status-codes`` (the policy's list),
  ``retriable-headers`` (any matcher matching a response header), ``envoy-ratelimited``
  (an ``x-envoy-ratelimited`` header), and the gRPC conditions by the ``grpc-status``
  of the response headers;
- an attempt that ended without a response (a reset, a protocol error, a per-try
  timeout) is retried on ``5xx``, ``gateway-error`` and ``reset``; a failed connect also
  on ``connect-failure`` and ``reset-before-request``.  ``refused-stream`` is an
  HTTP/2 condition (a stream the upstream refused).  The route timeout itself is
  never retried.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from config import model
from sidecar.http.route_table import headers_match

GATEWAY_ERRORS = frozenset((502, 503, 504))
GRPC_CONDITIONS = {"1": "cancelled", "4": "deadline-exceeded", "8": "resource-exhausted",
                   "13": "internal", "14": "unavailable"}
RESET_CONDITIONS = frozenset(("5xx", "gateway-error", "reset"))
REFUSED_CONDITIONS = RESET_CONDITIONS | {"refused-stream"}
CONNECT_CONDITIONS = frozenset(("5xx", "gateway-error", "reset", "connect-failure",
                                "reset-before-request"))

# Retries in flight at once per cluster are bounded by the cluster's circuit breaker
# (ClusterRuntime.retry_limit: max_retries, default 3, or the retry budget).


def retry_response(policy: model.RetryPolicy, status: int, headers: list[tuple[str, str]]) -> bool:
    """Whether Envoy retries an attempt that got this response head."""
    on = policy.retry_on
    if "5xx" in on and status >= 500:
        return True
    if "gateway-error" in on and status in GATEWAY_ERRORS:
        return True
    if "retriable-4xx" in on and status == 409:
        return True
    if "retriable-status-codes" in on and status in policy.retriable_status_codes:
        return True
    if "envoy-ratelimited" in on and any(k == "x-envoy-ratelimited" for k, _ in headers):
        return True
    if "retriable-headers" in on and policy.retriable_headers:
        for matcher in policy.retriable_headers:
            if headers_match((matcher,), headers, "", "", "", ""):
                return True
    for name, value in headers:
        if name == "grpc-status":
            condition = GRPC_CONDITIONS.get(value.strip())
            return condition is not None and condition in on
    return False


def retry_failure(policy: model.RetryPolicy, kind: str) -> bool:
    """Whether Envoy retries an attempt that ended without a response head.

    ``kind``: "connect" (the connection could not be made), "reset" (closed or
    broken before the head), "refused" (an HTTP/2 stream the upstream refused),
    "per_try_timeout".
    """
    on = policy.retry_on
    if kind == "connect":
        return not on.isdisjoint(CONNECT_CONDITIONS)
    if kind == "refused":
        return not on.isdisjoint(REFUSED_CONDITIONS)
    return not on.isdisjoint(RESET_CONDITIONS)


class BackOff:
    """Envoy's JitteredExponentialBackOffStrategy, in whole milliseconds: the n-th wait is
    ``random() % min(base * 2**(n-1), max)`` (uniform below a doubling ceiling)."""

    __slots__ = ("max_ms", "next_ms", "random")

    def __init__(self, base_ms: int, max_ms: int,
                 random_source: Callable[[], int] = lambda: random.getrandbits(64)) -> None:
        self.max_ms = max_ms
        self.next_ms = base_ms
        self.random = random_source

    def next_backoff_ms(self) -> int:
        backoff = self.next_ms
        self.next_ms = self.max_ms if backoff > self.max_ms // 2 else backoff * 2
        return min(self.random() % backoff, self.max_ms)


def next_host(cluster: Any, policy: model.RetryPolicy, attempted: list[Any],
              hash_key: int | None = None) -> Any:
    """The host for a retry: with the previous_hosts predicate, hosts already tried are
    picked again only after host_selection_retry_max_attempts refusals (as Envoy).
    ``hash_key``: the route's hash, for RING_HASH / MAGLEV clusters (None otherwise)."""
    host = cluster.choose_host(hash_key)
    if policy.previous_hosts:
        for attempt in range(1, policy.host_selection_retry_max_attempts + 1):
            if host is None or host not in attempted:
                break
            # A consistent-hash balancer walks on from the hash (Envoy passes the attempt).
            host = cluster.choose_host(hash_key, attempt)
    return host
