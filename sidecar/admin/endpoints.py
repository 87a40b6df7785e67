"""The admin endpoints: what each of Envoy 1.40's admin paths answers, as plain functions.

A handler takes the AdminTarget and the query parameters and returns a Reply;
it never sees sockets.  Handlers marked ``offload`` render in a worker thread
from a snapshot (ThreadView) so that a big config dump or stats scrape does
not stall the proxy's event loop.  Stats come from sidecar.stats.StatsStore,
filtered with RE2 as Envoy filters them.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import re2
from google.protobuf.message import Message

from sidecar.admin.clusters import render as render_clusters
from sidecar.admin.config_dump import (AdminError, DynamicView, config_dump_json, effective_node,
                                       server_info_json)
from sidecar.stats import Scope, StatsStore

TEXT = "text/plain; charset=UTF-8"
TEXT_BARE = "text/plain"      # Envoy's config_dump errors and codec errors say no charset
JSON = "application/json"
HTML = "text/html; charset=UTF-8"
# Envoy 1.40 serves /stats/prometheus as plain text/plain (checked with curl),
# not the exposition format's "text/plain; version=0.0.4" of prometheus-client.
PROMETHEUS = TEXT


class AdminTarget(Protocol):
    """What the admin reads and drives; implemented by the proxy's Server object."""

    stats: StatsStore
    state: str                  # "PRE_INITIALIZING" | "INITIALIZING" | "LIVE" | "DRAINING"
    bootstrap: Message
    config_updated_at: float    # epoch seconds
    start_time: float           # epoch seconds
    options: dict[str, Any]
    health_failed: bool         # set by health_check_failed(); reported as DRAINING
    cluster_manager: Any        # sidecar.upstream.cluster.ClusterManager

    def request_shutdown(self) -> None: ...
    def health_check_failed(self, failed: bool) -> None: ...
    def dynamic_view(self) -> DynamicView | None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: str
    content_type: str = TEXT
    after: Callable[[], None] | None = None   # runs once the reply is flushed


Handler = Callable[[AdminTarget, dict[str, str]], Reply]


@dataclass(frozen=True, slots=True)
class Endpoint:
    handler: Handler
    help: str
    post_only: bool = False
    offload: bool = False       # render in a worker thread
    params: tuple[tuple[str, str], ...] = ()


def package_version() -> str:
    try:
        return importlib.metadata.version("sidecar")
    except importlib.metadata.PackageNotFoundError:   # running from a source checkout
        return "0.1.0"


# --- endpoints ----------------------------------------------------------------

def server_state(target: AdminTarget) -> str:
    """Envoy's Utility::serverState: a failed health check reads as DRAINING."""
    return "DRAINING" if target.health_failed else target.state


def ready(target: AdminTarget, params: dict[str, str]) -> Reply:
    state = server_state(target)
    return Reply(200 if state == "LIVE" else 503, f"{state}\n")


def server_info(target: AdminTarget, params: dict[str, str]) -> Reply:
    ver = package_version()
    body = server_info_json(version=f"sidecar/{ver}", state=server_state(target),
                            uptime_s=max(0.0, time.time() - target.start_time),
                            options=target.options,
                            node=effective_node(target.bootstrap, target.options, ver))
    return Reply(200, body, JSON)


def clusters(target: AdminTarget, params: dict[str, str]) -> Reply:
    as_json = params.get("format") == "json"      # any other format: text, as Envoy
    body = render_clusters(target.cluster_manager.clusters, as_json)
    return Reply(200, body, JSON if as_json else TEXT)


def config_dump(target: AdminTarget, params: dict[str, str]) -> Reply:
    name_regex = params.get("name_regex") or None
    matcher = None
    if name_regex is not None:
        try:
            matcher = _compile(name_regex).fullmatch   # Envoy's SafeRegex matches in full
        except re2.error as e:
            return Reply(400, f"INVALID_ARGUMENT: Error while parsing name_regex from "
                              f"{name_regex}: {_re2_message(e)}", TEXT_BARE)
    ver = package_version()
    try:
        body = config_dump_json(target.bootstrap,
                                effective_node(target.bootstrap, target.options, ver),
                                target.config_updated_at,
                                resource=params.get("resource") or None,
                                mask=params.get("mask") or None,
                                name_regex=(lambda n: matcher(n) is not None) if matcher else None,
                                dynamic=target.dynamic_view(),
                                include_eds="include_eds" in params)
    except AdminError as e:
        return Reply(e.status, e.message, TEXT_BARE)
    return Reply(200, body, JSON)


def stats(target: AdminTarget, params: dict[str, str]) -> Reply:
    fmt = params.get("format", "text")
    if fmt == "prometheus":
        return prometheus_stats(target, params)
    if fmt in ("html", "active-html"):
        return Reply(400, f"format={fmt} is not supported by this admin; "
                          "use text, json or prometheus\n")
    if fmt not in ("text", "json"):
        return Reply(400, "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n")
    kind = params.get("type", "All")
    if kind not in ("All", "Counters", "Gauges", "Histograms", "TextReadouts"):
        return Reply(400, "invalid &type= param")
    if params.get("histogram_buckets", "cumulative") not in (
            "cumulative", "disjoint", "detailed", "summary", "prometheusnative", "none"):
        return Reply(400, "usage: /stats?histogram_buckets=(cumulative|disjoint|detailed"
                          "|summary|prometheusnative)\n")
    keep = _stat_filter(params)
    if isinstance(keep, Reply):
        return keep
    rows = sorted((name, value) for name, value, counter in target.stats.dotted()
                  if keep(name, value)
                  and (kind == "All" or kind == ("Counters" if counter else "Gauges")))
    # Histograms and text readouts: we keep none, so those types list nothing.
    if fmt == "json":
        return Reply(200, json.dumps({"stats": [{"name": n, "value": v} for n, v in rows]},
                                     separators=(",", ":")), JSON)
    return Reply(200, "".join(f"{n}: {v}\n" for n, v in rows))


def prometheus_stats(target: AdminTarget, params: dict[str, str]) -> Reply:
    if params.get("histogram_buckets", "cumulative") not in ("cumulative", "summary"):
        return Reply(400, "unsupported prometheus histogram bucket mode")
    keep = _stat_filter(params)
    if isinstance(keep, Reply):
        return keep
    filtered = "filter" in params or "usedonly" in params
    text = target.stats.prometheus_text(keep if filtered else None)
    # StatsStore renders no families as "\n"; Envoy sends an empty body.
    return Reply(200, "" if text == "\n" else text, PROMETHEUS)


def quitquitquit(target: AdminTarget, params: dict[str, str]) -> Reply:
    return Reply(200, "OK\n", after=target.request_shutdown)


def healthcheck_fail(target: AdminTarget, params: dict[str, str]) -> Reply:
    target.health_check_failed(True)
    return Reply(200, "OK\n")


def healthcheck_ok(target: AdminTarget, params: dict[str, str]) -> Reply:
    target.health_check_failed(False)
    return Reply(200, "OK\n")


def help_page(target: AdminTarget, params: dict[str, str]) -> Reply:
    return Reply(200, help_text())


def home_page(target: AdminTarget, params: dict[str, str]) -> Reply:
    links = "".join(f"<li><a href='{p}'>{p}</a>: {e.help}</li>\n"
                    for p, e in sorted(ENDPOINTS.items()) if p != "/" and not e.post_only)
    return Reply(200, "<!DOCTYPE html>\n<html lang='en'>\n<head><title>Envoy Admin</title>"
                      f"</head>\n<body>\n<ul>\n{links}</ul>\n</body>\n</html>\n", HTML)


_STAT_PARAMS = (("usedonly", "Only include stats that have been written by system since restart"),
                ("filter", "Regular expression (Google re2) for filtering stats"),
                ("invert_filter", "Invert the filter regex"))
ENDPOINTS: dict[str, Endpoint] = {
    "/": Endpoint(home_page, "Admin home page"),
    "/clusters": Endpoint(clusters, "upstream cluster status", params=(
        ("format", "File format to use; One of (text, json)"),)),
    "/config_dump": Endpoint(config_dump, "dump current Envoy configs", offload=True, params=(
        ("resource", "The resource to dump"),
        ("mask", "The mask to apply. When both resource and mask are specified, the mask is "
                 "applied to every element in the desired repeated field so that only a subset "
                 "of fields are returned. The mask is parsed as a Protobuf::FieldMask"),
        ("name_regex", "Dump only the currently loaded configurations whose names match the "
                       "specified regex. Can be used with both resource and mask query "
                       "parameters."))),
    "/healthcheck/fail": Endpoint(healthcheck_fail, "cause the server to fail health checks",
                                  post_only=True),
    "/healthcheck/ok": Endpoint(healthcheck_ok, "cause the server to pass health checks",
                                post_only=True),
    "/help": Endpoint(help_page, "print out list of admin commands"),
    "/quitquitquit": Endpoint(quitquitquit, "exit the server", post_only=True),
    "/ready": Endpoint(ready, "print server state, return 200 if LIVE, otherwise return 503"),
    "/server_info": Endpoint(server_info, "print server version/status information"),
    "/stats": Endpoint(stats, "print server stats", offload=True, params=_STAT_PARAMS + (
        ("format", "Format to use; One of (text, json, prometheus)"),
        ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges, "
                 "TextReadouts)"))),
    "/stats/prometheus": Endpoint(prometheus_stats, "print server stats in prometheus format",
                                  offload=True, params=_STAT_PARAMS),
}


def help_text() -> str:
    lines = ["admin commands are:"]
    for path, endpoint in sorted(ENDPOINTS.items()):
        lines.append(f"  {path}{' (POST)' if endpoint.post_only else ''}: {endpoint.help}")
        lines.extend(f"      {name}: {text}" for name, text in endpoint.params)
    return "\n".join(lines) + "\n"


# --- stats helpers ---------------------------------------------------------------

def _stat_filter(params: dict[str, str]) -> Callable[[str, int], bool] | Reply:
    """?filter= (RE2, partial match, as Envoy), ?invert_filter, ?usedonly.

    Envoy's usedonly means "written at least once"; we keep no such flag, so a
    stat counts as used when it is non-zero.
    """
    used_only = "usedonly" in params   # a presence flag in Envoy: usedonly=false filters too
    search: Callable[[str], Any] | None = None
    if params.get("filter"):
        try:
            search = _compile(params["filter"]).search
        except re2.error as e:
            return Reply(400, f"Invalid re2 regex: {_re2_message(e)}")
    invert = "invert_filter" in params

    def keep(name: str, value: int) -> bool:
        if used_only and not value:
            return False
        return search is None or (search(name) is None) == invert
    return keep


class _Snapshot(StatsStore):
    """A fixed list of scopes.  Rendering in a worker thread must not iterate the
    live scope dicts, which the event loop may grow meanwhile."""

    def __init__(self, scopes: list[Scope]) -> None:
        super().__init__()
        self._scopes = scopes

    def scopes(self) -> Iterator[Scope]:
        return iter(self._scopes)


@dataclass(slots=True)
class ThreadView:
    """What an offloaded handler may read: a snapshot taken on the event loop."""

    stats: StatsStore
    state: str
    bootstrap: Message
    config_updated_at: float
    start_time: float
    options: dict[str, Any]
    health_failed: bool
    dynamic: DynamicView | None
    cluster_manager: Any = None     # live state: read on the event loop only (/clusters)

    @classmethod
    def of(cls, target: AdminTarget) -> ThreadView:
        return cls(_Snapshot(list(target.stats.scopes())), target.state, target.bootstrap,
                   target.config_updated_at, target.start_time, dict(target.options),
                   target.health_failed, target.dynamic_view())

    def dynamic_view(self) -> DynamicView | None:
        return self.dynamic

    def request_shutdown(self) -> None:
        raise RuntimeError("mutating admin actions run on the event loop")

    def health_check_failed(self, failed: bool) -> None:
        raise RuntimeError("mutating admin actions run on the event loop")


@lru_cache(maxsize=64)
def _compile(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False   # RE2 would log every bad admin query to stderr
    return re2.compile(pattern, options=options)


def _re2_message(error: Exception) -> str:
    arg = error.args[0] if error.args else str(error)
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
