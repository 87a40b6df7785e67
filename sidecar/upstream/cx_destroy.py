"""What a closed upstream connection counts: Envoy's upstream_cx_destroy family.

Envoy's connection pools count every close of an upstream connection, whichever
side closed it and whether it ever connected (a refused connect is a remote
close, a connect timeout a local one): ``upstream_cx_destroy``, then
``_local`` or ``_remote`` by who closed it, and the three ``*_with_active_rq``
alongside when a request was still in flight on it (a route timeout, a client
gone mid-exchange, an upstream that closed mid-response).  Both pools
(pool.py, pool_h2.py) and the failed connect (connect_failure.py) count
through ``count_destroy``.
"""

from __future__ import annotations

from typing import Final

from sidecar.stats import ClusterStats

# Who closed a connection first (Http1UpstreamConnection.closer, Http2UpstreamConnection.closer):
# unknown while open; a close the upstream started (FIN or RST) is remote.
CLOSER_NONE: Final = 0
CLOSER_LOCAL: Final = 1
CLOSER_REMOTE: Final = 2


def count_destroy(stats: ClusterStats, local: bool, active_rq: bool) -> None:
    """One upstream connection closed: ``local`` when sidecar closed it, ``active_rq`` when a
    request was in flight on it then."""
    stats.upstream_cx_destroy += 1
    if local:
        stats.upstream_cx_destroy_local += 1
    else:
        stats.upstream_cx_destroy_remote += 1
    if active_rq:
        stats.upstream_cx_destroy_with_active_rq += 1
        if local:
            stats.upstream_cx_destroy_local_with_active_rq += 1
        else:
            stats.upstream_cx_destroy_remote_with_active_rq += 1
