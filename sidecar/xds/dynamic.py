"""The dynamic config: xDS resources applied to the running listeners and clusters.

Owns what came over xDS (each resource with its version and when it was
applied, for /config_dump), the warming rules, and which RDS and EDS names
are subscribed to (sidecar/xds/subscriptions.py asks each config source):

- an EDS cluster is not used until its endpoints arrive (it warms; an update
  of a cluster already in use keeps serving on the old one meanwhile);
- a listener with ``rds`` accepts no connection until its route config
  arrives (the one it replaces keeps serving meanwhile);
- a route config update applies to new requests at once;
- a response is applied whole or not at all: every resource is translated
  first, and any error rejects the response (NACK) with the old config
  untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from config import model
from sidecar.admin.config_dump import DynamicEntry, DynamicView
from sidecar.http.context import HcmContext
from sidecar.http.route_table import RouteTable
from sidecar.stats import CdsStats, LdsStats
from sidecar.xds.client import CLUSTER, ENDPOINT, LISTENER, ROUTE
from sidecar.xds.resources import KIND, translate
from sidecar.xds.subscriptions import Subscriptions

log = logging.getLogger(__name__)


@dataclass
class Applied:
    """One accepted resource: its model object, the raw Any, version and time of update."""
    value: Any
    raw: Any
    version: str
    updated_at: float


class DynamicConfig:
    def __init__(self, cluster_manager: Any, listener_manager: Any, static: model.Snapshot) -> None:
        self.cluster_manager = cluster_manager
        self.listener_manager = listener_manager
        self.static_clusters = {c.name for c in static.clusters}
        self.static_listeners = {l.name for l in static.listeners}
        self.subscriptions: Subscriptions | None = None
        self.resources: dict[str, dict[str, Applied]] = {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}}
        self.warming_clusters: dict[str, model.Cluster] = {}
        self.warming_listeners: dict[str, model.Listener] = {}
        self.answered: set[str] = set()             # types with an accepted response
        # Types whose first answer (and the warming it starts) start-up waits for.
        self.pending: set[str] = {CLUSTER, LISTENER}
        self.waits_for: set[str] = set()            # of CDS and LDS, those configured
        self.initialized = asyncio.Event()

    def expect(self, type_urls: set[str]) -> None:
        """Start-up is done when these wildcard types answered and nothing warms."""
        self.waits_for = set(type_urls)
        self._check_initialized(CLUSTER)
        self._check_initialized(LISTENER)

    # --- the Handler of every config source -------------------------------------------------------

    async def apply(self, type_url: str, updated: dict[str, tuple[str, Any]],
                    removed: set[str]) -> str | None:
        store = self.resources[type_url]
        named = set(updated) | removed
        # A SotW response repeats what did not change: leave those alone (a listener
        # re-applied would drain its connections for nothing).
        updated = {name: (version, raw) for name, (version, raw) in updated.items()
                   if name not in store or store[name].raw.value != raw.value}
        error = await self._apply(type_url, updated, removed)
        self._count(type_url, named, error is None)
        return error

    def _count(self, type_url: str, names: set[str], accepted: bool) -> None:
        """Envoy's update_attempt / update_success / update_rejected for the type's scope
        (EDS: each cluster that takes the updated endpoints)."""
        stats = self.cluster_manager.stats
        if type_url == LISTENER:
            scopes: list[Any] = [stats.root_scope(LdsStats)]
        elif type_url == CLUSTER:
            scopes = [stats.root_scope(CdsStats)]
        elif type_url == ENDPOINT:
            clusters = [c.config for c in self.cluster_manager.clusters.values()]
            clusters += self.warming_clusters.values()
            scopes = [stats.cluster_scope(c.name) for c in clusters
                      if c.type == "EDS" and c.eds_service_name in names]
        else:
            return
        for scope in scopes:
            scope.update_attempt += 1
            if accepted:
                scope.update_success += 1
            else:
                scope.update_rejected += 1

    async def _apply(self, type_url: str, updated: dict[str, tuple[str, Any]],
                     removed: set[str]) -> str | None:
        store = self.resources[type_url]
        translated: dict[str, Any] = {}
        for name, (_, raw) in sorted(updated.items()):
            try:
                translated[name] = translate(type_url, name, raw)
            except (ValueError, LookupError) as e:
                return str(e)
            except Exception as e:      # undecodable bytes and the like
                return f"{name!r}: cannot decode: {e}"
        now = time.time()
        if type_url == CLUSTER:
            error = self._apply_clusters(translated, removed)
        elif type_url == ENDPOINT:
            error = self._apply_endpoints(translated, removed)
        elif type_url == ROUTE:
            error = await self._apply_routes(translated)
        else:
            error = await self._apply_listeners(translated, removed)
        if error is not None:
            return error
        for name in removed:
            store.pop(name, None)
        for name, (version, raw) in updated.items():
            store[name] = Applied(translated[name], raw, version, now)
        self.answered.add(type_url)
        self._check_initialized(type_url)
        return None

    # --- CDS and EDS ----------------------------------------------------------------------

    def _apply_clusters(self, clusters: dict[str, model.Cluster], removed: set[str]) -> str | None:
        clash = sorted(self.static_clusters & set(clusters))
        if clash:
            return f"Cluster {clash[0]!r}: a static cluster of that name exists"
        for name in removed:
            self.warming_clusters.pop(name, None)
            self.cluster_manager.remove(name)
        endpoints = self.resources[ENDPOINT]
        for name, cluster in clusters.items():
            if cluster.type != "EDS":
                self.warming_clusters.pop(name, None)
                self.cluster_manager.put(cluster)
                continue
            assignment = endpoints.get(cluster.eds_service_name)
            if assignment is not None:
                self.warming_clusters.pop(name, None)
                self.cluster_manager.put(cluster, assignment.value)
            else:
                self.warming_clusters[name] = cluster
        self._subscribe_endpoints()
        return None

    def _apply_endpoints(self, assignments: dict[str, tuple[model.Endpoint, ...]],
                         removed: set[str]) -> str | None:
        changed = {**assignments, **{name: () for name in removed}}
        for name, endpoints in changed.items():
            for cluster in list(self.warming_clusters.values()):
                if cluster.eds_service_name == name:
                    del self.warming_clusters[cluster.name]
                    self.cluster_manager.put(cluster, endpoints)
                    log.info("cluster %s warmed: %d endpoints", cluster.name, len(endpoints))
            for runtime in list(self.cluster_manager.clusters.values()):
                if runtime.config.type == "EDS" and runtime.config.eds_service_name == name:
                    runtime.set_endpoints(endpoints)
        return None

    def add_static_eds_cluster(self, cluster: model.Cluster) -> None:
        """A static cluster whose endpoints come over EDS: it warms like a dynamic one."""
        self.warming_clusters[cluster.name] = cluster
        self._subscribe_endpoints()

    def _subscribe_endpoints(self) -> None:
        clusters = [c.config for c in self.cluster_manager.clusters.values()]
        clusters += self.warming_clusters.values()
        wanted: dict[model.ConfigSource, set[str]] = {}
        for cluster in clusters:
            if cluster.type == "EDS" and cluster.eds_config_source is not None:
                wanted.setdefault(cluster.eds_config_source, set()).add(cluster.eds_service_name)
        if self.subscriptions is not None:
            self.subscriptions.names(ENDPOINT, wanted)

    # --- LDS and RDS ----------------------------------------------------------------------

    async def _apply_routes(self, route_configs: dict[str, model.RouteConfig]) -> str | None:
        """New routes for the listeners using them; listeners waiting for them start.

        (An RDS resource that is removed stays in use by its listeners, as in
        Envoy: they go when their listener goes.)
        """
        for name, routes in route_configs.items():
            for active in self.listener_manager.listeners.values():
                context = active.context
                if isinstance(context, HcmContext) and context.config.rds_route_config_name == name:
                    context.route_table = RouteTable(routes)
        for listener in [l for l in self.warming_listeners.values() if listener_rds_name(l) in route_configs]:
            try:
                await self.listener_manager.put(listener, route_configs[listener_rds_name(listener)])
            except OSError as e:
                return f"Listener {listener.name!r}: {e}"
            del self.warming_listeners[listener.name]
            log.info("listener %s warmed", listener.name)
            self._subscribe_routes()        # the listener it replaced may have used other routes
        self._check_initialized(LISTENER)
        return None

    async def _apply_listeners(self, listeners: dict[str, model.Listener], removed: set[str]
                               ) -> str | None:
        clash = sorted(self.static_listeners & set(listeners))
        if clash:
            return f"Listener {clash[0]!r}: a static listener of that name exists"
        for name in removed:
            self.warming_listeners.pop(name, None)
            self.listener_manager.remove(name)
        routes = self.resources[ROUTE]
        for name, listener in listeners.items():
            rds = listener_rds_name(listener)
            if rds and rds not in routes:
                self.warming_listeners[name] = listener
                continue
            self.warming_listeners.pop(name, None)
            try:
                await self.listener_manager.put(listener, routes[rds].value if rds else None)
            except OSError as e:
                return f"Listener {name!r}: {e}"
        self._subscribe_routes()
        return None

    def add_static_rds_listener(self, listener: model.Listener) -> None:
        """A static listener whose routes come over RDS: it warms like a dynamic one."""
        self.warming_listeners[listener.name] = listener
        self._subscribe_routes()

    def _subscribe_routes(self) -> None:
        listeners = [a.config for a in self.listener_manager.listeners.values()]
        listeners += self.warming_listeners.values()
        wanted: dict[model.ConfigSource, set[str]] = {}
        for listener in listeners:
            nf = listener.filter_chain.filter
            if isinstance(nf, model.HttpConnectionManager) and nf.rds_config_source is not None:
                wanted.setdefault(nf.rds_config_source, set()).add(nf.rds_route_config_name)
        if self.subscriptions is not None:
            self.subscriptions.names(ROUTE, wanted)

    def view(self) -> DynamicView:
        """What /config_dump shows: every accepted resource, warming ones marked.

        Called from the admin's worker thread: it works on copies of the dicts.
        """
        warming = {CLUSTER: set(self.warming_clusters), LISTENER: set(self.warming_listeners)}
        view: DynamicView = {}
        for type_url, store in list(self.resources.items()):
            pending = warming.get(type_url, set())
            view[KIND[type_url]] = [
                DynamicEntry(name, a.version, a.raw, a.updated_at, name in pending)
                for name, a in sorted(dict(store).items())]
        return view

    # --- start-up -------------------------------------------------------------------------

    def _check_initialized(self, type_url: str) -> None:
        """CDS is in once answered (if configured) with no cluster warming; LDS likewise."""
        if type_url in (CLUSTER, ENDPOINT):
            if (CLUSTER not in self.waits_for or CLUSTER in self.answered) and not self.warming_clusters:
                self.pending.discard(CLUSTER)
        elif (LISTENER not in self.waits_for or LISTENER in self.answered) and not self.warming_listeners:
            self.pending.discard(LISTENER)
        if not self.pending:
            self.initialized.set()


def listener_rds_name(listener: model.Listener) -> str:
    nf = listener.filter_chain.filter
    return nf.rds_route_config_name if isinstance(nf, model.HttpConnectionManager) else ""
