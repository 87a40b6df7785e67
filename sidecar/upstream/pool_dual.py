"""Both connection pools of one host of a cluster whose upstream protocol follows the
downstream request's (HttpProtocolOptions.use_downstream_protocol_config).

As Envoy's ClusterInfo::upstreamHttpProtocol: a request that came in over HTTP/2 goes
upstream over HTTP/2 (h2c), any other over HTTP/1.1.  Each pool is made on first use
(a host that only ever sees HTTP/1.1 clients never gets an HTTP/2 pool).  To admin
/clusters, outlier detection and the circuit breakers the pair is one host, as in
Envoy: connection counts and per-host counters are the two pools' sums (the router's
per-attempt outcome counters, rq_success / rq_error / rq_timeout, are kept here).
"""

from __future__ import annotations

from typing import Any

from config import model
from sidecar.http.message import Request
from sidecar.upstream.pool import Http1Pool
from sidecar.upstream.pool_h2 import Http2Pool


def upstream_http2(config: model.Cluster, request: Request) -> bool:
    """Whether ``request`` goes upstream over HTTP/2 on a cluster with ``config``."""
    return config.http2 or (config.downstream_protocol and request.version == "2")


class DualPool:
    def __init__(self, address: str, port: int, cluster: Any) -> None:
        self.address = address
        self.port = port
        # The cluster (ClusterRuntime) that makes the pools (with its config of the time)
        # and whose circuit breakers bound them; a CDS update that takes this pool over
        # sets its own (``breaker``).
        self.cluster = cluster
        self.pool1: Http1Pool | None = None
        self.pool2: Http2Pool | None = None
        self.closed = False
        # Reported by the router for each attempt (upstream_request.host_responded /
        # host_failed), whichever pool carried it.
        self.rq_success = self.rq_error = self.rq_timeout = 0

    def __repr__(self) -> str:
        return f"<DualPool {self.pool1!r} {self.pool2!r}>"

    def http1(self) -> Http1Pool:
        pool = self.pool1
        if pool is None:
            pool = self.pool1 = self.cluster.http1_pool(self.address, self.port)
            if self.closed:
                pool.close()
        return pool

    def http2(self) -> Http2Pool:
        pool = self.pool2
        if pool is None:
            pool = self.pool2 = self.cluster.http2_pool(self.address, self.port)
            if self.closed:
                pool.close()
        return pool

    def pools(self) -> list[Http1Pool | Http2Pool]:
        out: list[Http1Pool | Http2Pool] = []
        if self.pool1 is not None:
            out.append(self.pool1)
        if self.pool2 is not None:
            out.append(self.pool2)
        return out

    # The cluster whose circuit breakers bound both pools (as Http1Pool.breaker).
    @property
    def breaker(self) -> Any:
        return self.cluster

    @breaker.setter
    def breaker(self, value: Any) -> None:
        self.cluster = value
        for pool in self.pools():
            pool.breaker = value

    # --- what admin /clusters and ORIGINAL_DST cleanup read of a host's pool ---------

    @property
    def busy(self) -> list[Any]:
        return [conn for pool in self.pools() for conn in pool.busy]

    @property
    def idle(self) -> list[Any]:
        return [conn for pool in self.pools() for conn in pool.idle]

    @property
    def cx_total(self) -> int:
        return sum(pool.cx_total for pool in self.pools())

    @property
    def cx_connect_fail(self) -> int:
        return sum(pool.cx_connect_fail for pool in self.pools())

    @property
    def rq_total(self) -> int:
        return sum(pool.rq_total for pool in self.pools())

    @property
    def rq_pending_active(self) -> int:
        return sum(pool.rq_pending_active for pool in self.pools())

    def close(self) -> None:
        self.closed = True
        for pool in self.pools():
            pool.close()
