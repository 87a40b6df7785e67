"""The CORS filter at run time, as Envoy's (source/extensions/filters/http/cors).

With a policy for the route (its own, its virtual host's or its route config's) that is
enabled, a request with an Origin counts ``cors.origin_valid`` or ``cors.origin_invalid``;
a preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here with
200 and the access-control-* headers (unless its origin is not allowed and
forward_not_matching_preflights, true by default, sends it on); other responses to an
allowed origin get access-control-allow-origin, -allow-credentials and -expose-headers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from config import model
from filters.api import Handler, LocalReply, Request, Response
from filters.http.cors.factory import CorsPolicyConfig
from filters.http.common import Percent
from sidecar.stats import CorsStats

DETAILS = "cors_response"
Headers = list[tuple[str, str]]


class CorsFilter:
    def __init__(self, name: str, stats: CorsStats,
                 randrange: Callable[[int], int] = random.randrange) -> None:
        self.name = name                  # the key of its typed_per_filter_config
        self.stats = stats
        self.randrange = randrange        # injectable for tests

    async def __call__(self, request: Request, next: Handler, /) -> Response:
        entry = request.route
        if entry is None:
            return await next(request)
        policies = self.policies(entry)
        if not policies:
            return await next(request)
        first = policies[0]
        enabled = self.draw(first.filter_enabled, True)
        shadow = self.draw(first.shadow_enabled, False)
        if not enabled and not shadow:
            return await next(request)
        origin = request.header("origin")
        if not origin:
            return await next(request)
        allowed = any(m.match("*") or m.match(origin)
                      for m in pick(policies, "allow_origins", ()))
        if allowed:
            self.stats.origin_valid += 1
        else:
            self.stats.origin_invalid += 1
        if not enabled:
            return await next(request)           # shadow mode: counted only
        request_method = request.header("access-control-request-method")
        if request.method == "OPTIONS" and request_method:
            if allowed or not pick(policies, "forward_not_matching_preflights", True):
                raise LocalReply(200, b"", "", DETAILS, headers=self.encode(self.preflight(
                    request, policies, origin if allowed else None, request_method),
                    policies, origin if allowed else None))
        if not allowed:
            return await next(request)
        try:
            response = await next(request)
        except LocalReply as reply:
            reply.headers = self.encode(reply.headers, policies, origin)
            raise
        response.headers = self.encode(response.headers, policies, origin)
        return response

    def policies(self, entry: Any) -> list[CorsPolicyConfig]:
        """The policies of the route, its virtual host and its route config, most specific
        first; none when the filter is disabled for the route.

        The route entry keeps only the route's and virtual host's typed_per_filter_config;
        the route config's is the most specific one when neither of them has one.
        """
        name = self.name
        most_specific = entry.per_filter_config.get(name)
        if most_specific is None or most_specific is model.FILTER_DISABLED:
            return []
        found = []
        for level in (entry.route, entry.vhost):
            for key, config in level.typed_per_filter_config:
                if key == name and isinstance(config, CorsPolicyConfig):
                    found.append(config)
        if not found and isinstance(most_specific, CorsPolicyConfig):
            found.append(most_specific)
        return found

    def draw(self, percent: Percent | None, default: bool) -> bool:
        if percent is None:
            return default
        if percent.numerator >= percent.denominator:
            return True
        return percent.numerator > 0 and self.randrange(percent.denominator) < percent.numerator

    @staticmethod
    def preflight(request: Request, policies: list[CorsPolicyConfig], origin: str | None,
                  request_method: str) -> Headers:
        headers: Headers = []
        if origin is not None:
            headers.append(("access-control-allow-origin", origin))
        if pick(policies, "allow_credentials", False):
            headers.append(("access-control-allow-credentials", "true"))
        methods = pick(policies, "allow_methods", "")
        if methods:
            headers.append(("access-control-allow-methods",
                            request_method if methods == "*" else methods))
        allow_headers = pick(policies, "allow_headers", "")
        if allow_headers:
            headers.append(("access-control-allow-headers",
                            request.header("access-control-request-headers") or ""
                            if allow_headers == "*" else allow_headers))
        max_age = pick(policies, "max_age", "")
        if max_age:
            headers.append(("access-control-max-age", max_age))
        if (pick(policies, "allow_private_network_access", False)
                and request.header("access-control-request-private-network") == "true"):
            headers.append(("access-control-allow-private-network", "true"))
        return headers

    @staticmethod
    def encode(headers: Headers, policies: list[CorsPolicyConfig], origin: str | None) -> Headers:
        """Envoy's encodeHeaders for a CORS request of an allowed origin (its preflight
        response too): set, replacing what the response had."""
        if origin is None:
            return headers
        headers = set_header(headers, "access-control-allow-origin", origin)
        if pick(policies, "allow_credentials", False):
            headers = set_header(headers, "access-control-allow-credentials", "true")
        expose = pick(policies, "expose_headers", "")
        if expose:
            headers = set_header(headers, "access-control-expose-headers", expose)
        return headers


def pick(policies: list[CorsPolicyConfig], field: str, default: Any) -> Any:
    """The field of the most specific policy that sets it (Envoy's accessors)."""
    for policy in policies:
        value = getattr(policy, field)
        if value is not None and value != "" and value != ():
            return value
    return default


def set_header(headers: Headers, name: str, value: str) -> Headers:
    for i, (key, _) in enumerate(headers):
        if key == name:
            headers = [h for h in headers if h[0] != name]
            headers.insert(i, (name, value))
            return headers
    headers.append((name, value))
    return headers
