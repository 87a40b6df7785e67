"""Composition root: builds the cluster and listener managers and the admin server, owns lifecycle.

States follow Envoy's /server_info: PRE_INITIALIZING while clusters warm,
LIVE once every listener is bound, DRAINING after SIGTERM or /quitquitquit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from google.protobuf.message import Message

from config import model
from sidecar import native
from sidecar.admin.server import start_admin
from sidecar.codec.http1 import get_parsers
from sidecar.http.access_log import AccessLogs
from sidecar.listener.manager import ListenerManager
from sidecar.stats import StatsStore
from sidecar.upstream.cluster import ClusterManager

log = logging.getLogger(__name__)


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

    # --- AdminTarget -------------------------------------------------------------

    def request_shutdown(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def health_check_failed(self, failed: bool) -> None:
        self.health_failed = failed

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
            await self.listener_manager.add(listener)
        self.state = "LIVE"
        self.stats.server.live = 1
        self.stats.server.state = 0
        log.info("sidecar is LIVE: %d listeners, %d clusters, hot path %s", len(self.snapshot.listeners),
                 len(self.snapshot.clusters), native.state)

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
        self.cluster_manager.close()
        self.listener_manager.access_logs.close()
        if self.admin is not None:
            self.admin.close()
