"""Route selection: virtual host by domain, then the first route whose match accepts the request.

Compiled once per RouteConfig: domain lookups are a dict and two short
lists, so the per-request cost is a few string operations.
"""

from __future__ import annotations

import random

from typing import Any

from config import model
from sidecar.codec.events import Headers


class VirtualHostTable:
    """Envoy's domain precedence: exact, then ``*.suffix`` and ``prefix.*`` (longest first), then ``*``."""

    def __init__(self, virtual_hosts: tuple[model.VirtualHost, ...]) -> None:
        self.exact: dict[str, model.VirtualHost] = {}
        suffixes: list[tuple[str, model.VirtualHost]] = []
        prefixes: list[tuple[str, model.VirtualHost]] = []
        self.default: model.VirtualHost | None = None
        for vh in virtual_hosts:
            for domain in vh.domains:
                d = domain.lower()
                if d == "*":
                    self.default = vh
                elif d.startswith("*"):
                    suffixes.append((d[1:], vh))
                elif d.endswith("*"):
                    prefixes.append((d[:-1], vh))
                else:
                    self.exact[d] = vh
        # Longest wildcard wins (Envoy sorts them by length, longest first).
        self.suffixes = sorted(suffixes, key=lambda s: -len(s[0]))
        self.prefixes = sorted(prefixes, key=lambda s: -len(s[0]))

    def find(self, authority: str) -> model.VirtualHost | None:
        host = authority.lower()
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        for suffix, vh in self.suffixes:
            # "*.foo.com" needs at least one character before ".foo.com".
            if len(host) > len(suffix) and host.endswith(suffix):
                return vh
        for prefix, vh in self.prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return vh
        return self.default


def path_matches(match: model.RouteMatch, path: str) -> bool:
    kind = match.kind
    if kind == "prefix":
        # Envoy matches the prefix against the whole :path (query included).
        if match.case_sensitive:
            return path.startswith(match.value)
        return path.lower().startswith(match.value)
    bare = path.split("?", 1)[0].split("#", 1)[0]
    if kind == "path":
        return bare == match.value if match.case_sensitive else bare.lower() == match.value
    if kind == "safe_regex":
        return match.regex.fullmatch(bare) is not None
    # path_separated_prefix: the prefix is the whole path or is followed by "/".
    if not match.case_sensitive:
        bare = bare.lower()
    value = match.value
    return bare == value or (bare.startswith(value) and bare[len(value)] == "/")


def header_value(headers: Headers, name: str, authority: str, method: str,
                 path: str, scheme: str) -> str | None:
    """All values of ``name`` joined by "," (as Envoy matches them); pseudo-headers included."""
    if name[0] == ":":
        return {":authority": authority, ":method": method, ":path": path,
                ":scheme": scheme}.get(name)
    if name == "host":
        return authority
    values = [v for k, v in headers if k == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)


def headers_match(matchers: tuple[model.HeaderMatcher, ...], headers: Headers, authority: str,
                  method: str, path: str, scheme: str) -> bool:
    for m in matchers:
        value = header_value(headers, m.name, authority, method, path, scheme)
        if m.present is not None:
            if (value is not None) == m.present and not m.invert:
                continue
            if (value is not None) != m.present and m.invert:
                continue
            return False
        if value is None:
            if not m.treat_missing_as_empty:
                return False   # a missing header never matches, even inverted (Envoy)
            value = ""
        if m.range is not None:
            try:
                number = int(value)
                ok = m.range[0] <= number < m.range[1]
            except ValueError:
                ok = False
        else:
            ok = m.string.match(value)  # type: ignore[union-attr]
        if ok == m.invert:
            return False
    return True


def parse_query(path: str) -> dict[str, str]:
    """First value of each query parameter, as sent: Envoy matches the raw, undecoded text."""
    query = path.partition("?")[2].partition("#")[0]
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.setdefault(name, value)
    return params


def query_match(matchers: tuple[model.QueryParameterMatcher, ...], path: str) -> bool:
    params = parse_query(path)
    for m in matchers:
        value = params.get(m.name)
        if value is None:
            return False
        if m.string is not None and not m.string.match(value):
            return False
    return True


def route_cluster(request: Any, action: model.RouteAction
                  ) -> tuple[str, model.WeightedClusterEntry | None]:
    """The cluster ``action`` sends the request to, and its weighted_clusters entry.

    A weighted pick is a uniform draw over total_weight, as Envoy's, made once per
    request: a filter asking before the router (the fault filter's upstream_cluster)
    sees the cluster the router will use."""
    pick = request.cluster_pick
    if pick is not None:
        return pick      # type: ignore[no-any-return]
    if action.cluster:
        pick = (action.cluster, None)
    elif action.cluster_header:
        pick = (request.header(action.cluster_header) or "", None)
    else:
        draw = random.randrange(action.total_weight)
        pick = (action.weighted_clusters[-1].name, action.weighted_clusters[-1])
        for weighted in action.weighted_clusters:
            draw -= weighted.weight
            if draw < 0:
                pick = (weighted.name, weighted)
                break
    request.cluster_pick = pick
    return pick


class RouteEntry:
    """A route with what the router needs precomputed: the header mutations of every
    level that has any, most specific first (route, virtual host, route config), as
    Envoy applies them when most_specific_header_mutations_wins is off.

    ``per_filter_config`` maps an HTTP filter's config name (its ``name`` in
    http_filters) to the most specific typed_per_filter_config for it: the
    route's, else the virtual host's, else the route config's (Envoy's
    mostSpecificPerFilterConfig).  A value is what that filter's factory parsed,
    or ``model.FILTER_DISABLED``."""

    __slots__ = ("route", "vhost", "action", "request_mutations", "response_mutations",
                 "per_filter_config", "callback_path")

    def __init__(self, route: model.Route, vhost: model.VirtualHost, config: model.RouteConfig) -> None:
        self.route = route
        self.vhost = vhost
        self.action = route.action
        levels = (route, vhost, config)
        self.request_mutations = tuple(l.request_headers for l in levels if l.request_headers)
        self.response_mutations = tuple(l.response_headers for l in levels if l.response_headers)
        per_filter: dict[str, Any] = {}
        for level in (config, vhost, route):       # least specific first: later ones win
            per_filter.update(level.typed_per_filter_config)
        self.per_filter_config = per_filter
        # Whether the router may forward on its callback path (Router.start): a plain route
        # action, without the features that need its coroutine (retries, mirroring, a
        # stream duration limit).
        action = route.action
        self.callback_path = (type(action) is model.RouteAction and action.retry_policy is None
                              and not action.mirror_policies
                              and action.max_stream_duration is None
                              and action.grpc_timeout_header_max is None)


class RouteTable:
    """A compiled RouteConfig: ``select()`` returns the matching RouteEntry, or None (no route)."""

    def __init__(self, config: model.RouteConfig) -> None:
        self.config = config
        self.hosts = VirtualHostTable(config.virtual_hosts)
        self.entries = {id(vh): [RouteEntry(r, vh, config) for r in vh.routes]
                        for vh in config.virtual_hosts}

    def select(self, authority: str, path: str, method: str, headers: Headers,
               scheme: str) -> RouteEntry | None:
        vh = self.hosts.find(authority)
        if vh is None:
            return None
        for entry in self.entries[id(vh)]:
            m = entry.route.match
            if not path_matches(m, path):
                continue
            if m.headers and not headers_match(m.headers, headers, authority, method, path, scheme):
                continue
            if m.query_parameters and not query_match(m.query_parameters, path):
                continue
            return entry
        return None
