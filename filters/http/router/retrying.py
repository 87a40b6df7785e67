"""The router's path for routes with a retry policy: attempts one after another, as
Envoy's router drives its RetryStateImpl (the decisions themselves are in retry.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from config import model
from filters.http.router import retry
from filters.http.router.exchange import exchange
from filters.http.router.upstream_request import SentBody, count_reply, host_failed, host_responded
from sidecar.http import local_reply
from sidecar.http.local_reply import LocalReply
from sidecar.http.message import Request, Response
from sidecar.http.route_table import RouteEntry
from sidecar.upstream.pool_dual import upstream_http2

if TYPE_CHECKING:
    from filters.http.router.filter import Router


async def forward_retrying(router: Router, request: Request, entry: RouteEntry, action: model.RouteAction,
                           policy: model.RetryPolicy, weighted: model.WeightedClusterEntry | None,
                           cluster: Any, host: Any, sent: SentBody,
                           hash_key: int | None = None) -> Response:
    """Forward under a retry policy (route's, else virtual host's), as Envoy's router.

    Attempts go one after another; the route timeout spans them all, each one
    also bounded by per_try_timeout.  The request body is held in ``sent`` (up to the
    route's per_request_buffer_limit_bytes, else the listener's buffer limit)
    and replayed on each attempt; a body larger than that turns retries off.
    ``hash_key`` is the route's hash_policy result: retries pick with it again.
    """
    loop = router.loop
    info = request.info
    stats = cluster.stats
    start = loop.time()
    timeout = action.timeout
    deadline = None if timeout is None else start + timeout
    per_try = policy.per_try_timeout
    retries_left = policy.num_retries if policy.retry_on else 0
    original_headers = request.headers
    # The keep-alive race (HTTP/1) or a refused stream (HTTP/2) is resent by the exchange
    # itself, unless this policy retries it.
    race_replay = not retry.retry_failure(policy, "refused" if upstream_http2(cluster.config, request)
                                                    else "reset")
    backoff: retry.BackOff | None = None
    attempted: list[Any] = []
    attempt = 0
    holding_retry = False       # a slot of the cluster's max_retries (circuit breaker)
    try:
        while True:
            attempt += 1
            if stats.upstream_rq_active >= cluster.max_requests:
                raise router.overflow(stats, local_reply.overflow(), active=True)
            attempted.append(host)
            info.upstream_host = host.label
            stats.upstream_rq_total += 1
            stats.upstream_rq_active += 1
            host.active_requests += 1
            now = loop.time()
            try_deadline = deadline
            per_try_first = False
            if per_try is not None and (deadline is None or now + per_try < deadline):
                try_deadline = now + per_try
                per_try_first = True
            # x-envoy-expected-rq-timeout-ms: what this attempt may take.
            if per_try_first:
                expected = per_try
            elif attempt == 1 or deadline is None:
                expected = timeout
            else:
                expected = deadline - now
            request.headers = list(original_headers)
            head = router.upstream_head(request, entry, action, weighted, host, expected,
                                      attempt if policy.include_request_attempt_count else 0)
            response: Response | None = None
            failure: LocalReply | None = None
            kind = ""
            try:
                response = await exchange(router, request, host, head, try_deadline, sent,
                                          race_replay)
            except LocalReply as reply:
                failure = reply
                if reply.flag == "UT":
                    if per_try_first and (deadline is None or loop.time() < deadline):
                        kind = "per_try_timeout"
                        stats.upstream_rq_per_try_timeout += 1
                        failure = LocalReply(504, b"upstream request timeout", "UT",
                                             "upstream_per_try_timeout")
                    # else the route timeout: never retried
                elif reply.flag == "UF":
                    kind = "connect"
                elif reply.flag == "UO":    # max_pending_requests: never sent, not retried
                    stats.upstream_rq_total -= 1
                    raise router.overflow(stats, reply) from None
                elif reply.details.endswith("{remote_refused_stream_reset}"):
                    kind = "refused"    # HTTP/2 REFUSED_STREAM
                else:
                    kind = "reset"      # UC, UPE, UR: the attempt was reset before the head
            finally:
                stats.upstream_rq_active -= 1
                host.active_requests -= 1
            if response is not None:
                host_responded(host, response.status, response.headers)
                wants = sent.replayable and retry.retry_response(policy, response.status,
                                                                response.headers)
            else:
                assert failure is not None
                host_failed(host, failure)
                wants = bool(kind) and sent.replayable and retry.retry_failure(policy, kind)
            if holding_retry:
                # The retried attempt has its outcome: the retry slot is free again.
                holding_retry = False
                cluster.retries_active -= 1
                if not wants:
                    stats.upstream_rq_retry_success += 1
            if wants:
                if retries_left == 0:
                    stats.upstream_rq_retry_limit_exceeded += 1
                    info.set_flag("URX")
                    wants = False
                else:
                    retries_left -= 1
                    if cluster.retries_active >= cluster.retry_limit():
                        stats.upstream_rq_retry_overflow += 1
                        info.set_flag("UO")
                        wants = False
            if not wants:
                if response is not None:
                    if policy.include_attempt_count_in_response:
                        response.headers.append(("x-envoy-attempt-count", str(attempt)))
                    return router.respond(response, entry, weighted, stats, start)
                assert failure is not None
                if attempt > 1:
                    failure = local_reply.after_retries(failure)
                if policy.include_attempt_count_in_response:
                    failure.headers.append(("x-envoy-attempt-count", str(attempt)))
                count_reply(stats, failure)
                raise failure
            # Retry: drop this attempt's response, wait the back-off, pick a host.
            if response is not None and type(response.body) is not bytes and response.on_complete:
                response.on_complete(False)         # a streamed body: abort its connection
            cluster.retries_active += 1
            holding_retry = True
            stats.upstream_rq_retry += 1
            stats.upstream_rq_retry_backoff_exponential += 1
            if backoff is None:
                backoff = retry.BackOff(policy.base_interval_ms, policy.max_interval_ms)
            delay = backoff.next_backoff_ms() / 1000
            if deadline is not None and loop.time() + delay >= deadline:
                await asyncio.sleep(max(deadline - loop.time(), 0.0))
                late = local_reply.upstream_timeout()
                if policy.include_attempt_count_in_response:
                    late.headers.append(("x-envoy-attempt-count", str(attempt)))
                count_reply(stats, late)
                raise late
            if delay:
                await asyncio.sleep(delay)
            host = retry.next_host(cluster, policy, attempted, hash_key)
            if host is None:
                stats.upstream_cx_none_healthy += 1
                raise local_reply.no_healthy_upstream()
    finally:
        if holding_retry:
            cluster.retries_active -= 1
