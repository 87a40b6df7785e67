"""Composition root: builds the cluster and listener managers and the admin server, owns lifecycle.

States follow Envoy's /server_info: PRE_INITIALIZING while clusters warm,
LIVE once every listener is bound, DRAINING after SIGTERM or /quitquitquit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any

from envoy.config.core.v3 import base_pb2 as node_pb2
from google.protobuf.message import Message

from config import model
from sidecar import native
from sidecar.admin.config_dump import DynamicView
from sidecar.admin.server import start_admin
from sidecar.codec.http1 import get_parsers
from sidecar.http.access_log import AccessLogs
from sidecar.listener.manager import ListenerManager
from sidecar.stats import StatsStore
from sidecar.upstream.cluster import ClusterManager
from sidecar.xds.client import CLUSTER, LISTENER
from sidecar.xds.dynamic import DynamicConfig, listener_rds_name
from sidecar.xds.subscriptions import Subscriptions

log = logging.getLogger(__name__)


# The cyclic collector's first-generation threshold (CPython's default is 700 container
# allocations): a proxied request allocates dozens of container objects (coroutines,
# futures, events, header lists), so at 700 a young collection ran every few requests,
# each time traversing every request then in flight.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Once started: what exists now (config, modules, protobuf descriptors) lives as long as
    the process, so it is moved out of the collector's sight (``gc.freeze``) instead of being
    re-scanned by every full collection; and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class Server:
    def __init__(self, bootstrap: Message, snapshot: model.Snapshot, options: dict[str, Any]) -> None:
        self.bootstrap = bootstrap
        self.snapshot = snapshot
        self.options = options
        self.stats = StatsStore()
        self.state = "PRE_INITIALIZING"
        self.start_time = time.time()
        self.config_updated_at = self.start_time
        self.health_failed = False
        self.drain_time = float(options.get("drain_time_s", 600))
        request_parser, response_parser = get_parsers(options.get("http1_codec", "httptools"))
        self.cluster_manager = ClusterManager(self.stats, response_parser)
        self.listener_manager = ListenerManager(
            self.stats, self.cluster_manager, request_parser,
            AccessLogs(options.get("file_flush_interval_msec", 10000) / 1000))
        self.admin: asyncio.AbstractServer | None = None
        self._stop: asyncio.Event | None = None
        self.dynamic: DynamicConfig | None = None

    # --- AdminTarget -------------------------------------------------------------

    def request_shutdown(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def health_check_failed(self, failed: bool) -> None:
        self.health_failed = failed

    def dynamic_view(self) -> DynamicView | None:
        return self.dynamic.view() if self.dynamic is not None else None

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Warm clusters, start admin, bind listeners; raises OSError if a bind fails."""
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        self.stats.server.concurrency = 1
        if self.snapshot.admin is not None:
            a = self.snapshot.admin.address
            self.admin = await start_admin(self, a.address, a.port)
        self.state = "INITIALIZING"
        await self.cluster_manager.start(self.snapshot.clusters)
        for listener in self.snapshot.listeners:
            if listener_rds_name(listener) == "":
                await self.listener_manager.add(listener)
        if self.snapshot.dynamic is not None or any(
                c.type == "EDS" for c in self.snapshot.clusters) or any(
                listener_rds_name(l) for l in self.snapshot.listeners):
            await self._start_xds()
        self.state = "LIVE"
        settle_garbage_collector()
        self.stats.server.live = 1
        self.stats.server.state = 0
        log.info("sidecar is LIVE: %d listeners, %d clusters, hot path %s", len(self.snapshot.listeners),
                 len(self.snapshot.clusters), native.state)

    async def _start_xds(self) -> None:
        """Subscribe to what the config gets over xDS; wait (bounded) for the first of it."""
        self.dynamic = dynamic = DynamicConfig(self.cluster_manager, self.listener_manager,
                                               self.snapshot)
        node = node_pb2.Node()
        node.CopyFrom(self.bootstrap.node)
        node.user_agent_name = node.user_agent_name or "sidecar"
        dynamic.subscriptions = subscriptions = Subscriptions(node, dynamic, self.snapshot, self.stats)
        config = self.snapshot.dynamic
        wildcard = {CLUSTER: config.cds, LISTENER: config.lds} if config is not None else {}
        for type_url, source in wildcard.items():        # CDS first, as Envoy
            if source is not None:
                subscriptions.wildcard(type_url, source)
        for cluster in self.snapshot.clusters:
            if cluster.type == "EDS":
                dynamic.add_static_eds_cluster(cluster)
        for listener in self.snapshot.listeners:
            if listener_rds_name(listener):
                dynamic.add_static_rds_listener(listener)
        dynamic.expect({t for t, source in wildcard.items() if source is not None})
        timeout = (config.initial_fetch_timeout if config is not None else 15.0) or None
        # A shutdown request (SIGTERM) ends the wait too: it must not sit out the timeout.
        assert self._stop is not None
        waits = [asyncio.ensure_future(dynamic.initialized.wait()), asyncio.ensure_future(self._stop.wait())]
        done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not done:
            log.warning("xDS: no complete initial config after %.0fs (initial_fetch_timeout); "
                        "serving what has arrived", timeout)

    async def serve(self) -> None:
        await self.start()
        assert self._stop is not None
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by --drain-time-s), close."""
        log.info("shutting down: draining %d connections", self.listener_manager.open_connections())
        self.state = "DRAINING"
        self.stats.server.live = 0
        self.stats.server.state = 1
        self.listener_manager.stop_accepting()
        self.listener_manager.drain()
        deadline = time.monotonic() + self.drain_time
        while self.listener_manager.open_connections() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.dynamic is not None and self.dynamic.subscriptions is not None:
            await self.dynamic.subscriptions.stop()
        self.cluster_manager.close()
        self.listener_manager.access_logs.close()
        if self.admin is not None:
            self.admin.close()

