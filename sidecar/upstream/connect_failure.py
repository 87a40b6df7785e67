"""What a pool's failed connect to its host counts, and the local reply it becomes.

Both pools (HTTP/1, sidecar/upstream/pool.py; HTTP/2, pool_h2.py) fail a connect
the same way, as Envoy's pools do: the same counters, the same 503 UF.  Only what
happens next differs (the HTTP/1 pool raises to its one request, the HTTP/2 pool
fails every pending request), so the reply is returned as a factory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.http import local_reply
from sidecar.http.local_reply import LocalReply
from sidecar.upstream.cx_destroy import count_destroy

if TYPE_CHECKING:
    from sidecar.upstream.pool import Http1Pool
    from sidecar.upstream.pool_h2 import Http2Pool

log = logging.getLogger(__name__)


def connect_failed(pool: Http1Pool | Http2Pool, error: OSError) -> Callable[[], LocalReply]:
    """Count a failed connect in the cluster's stats and the host's (admin /clusters).

    A timeout (the cluster's connect_timeout, or the kernel's ETIMEDOUT: both
    TimeoutError) is upstream_cx_connect_timeout and "connection timeout"; any
    other error (refused, unreachable, closed before the HTTP/2 SETTINGS) is
    "remote connection failure" with the socket's error text, as Envoy words it.
    Either is also an upstream_cx_destroy, as in Envoy (sidecar/upstream/cx_destroy.py).
    A factory, not a reply: replies are mutable, so each request gets its own.
    """
    stats = pool.stats
    stats.upstream_cx_connect_fail += 1
    pool.cx_connect_fail += 1
    timed_out = isinstance(error, TimeoutError)
    # Envoy counts the connection's end too: its pool closes a connect that timed out
    # (local); a refused one was closed by the other side (remote).  No request was on it.
    count_destroy(stats, timed_out, False)
    if timed_out:
        stats.upstream_cx_connect_timeout += 1
        return local_reply.connect_timeout
    log.debug("connect to %s:%s failed: %s", pool.address, pool.port, error)
    reason = os.strerror(error.errno) if error.errno else ""
    return lambda: local_reply.connect_failure(reason)
