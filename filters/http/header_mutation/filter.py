"""The header mutation filter at run time: mutate the request's headers, then the response's.

As Envoy's (source/extensions/filters/http/header_mutation): the filter's own
mutations first, then those of each level (route, virtual host, route config)
that has a HeaderMutationPerRoute, most specific first, or least specific
first with most_specific_header_mutations_wins.  The response mutations apply
to local replies of the filters after it and of the router too, as Envoy's
encodeHeaders sees them.
"""

from __future__ import annotations

from typing import Any

from config import model
from filters.api import Handler, LocalReply, Request, Response
from filters.http.header_mutation.factory import (HeaderMutationConfig,
                                                  HeaderMutationPerRouteConfig, Mutations, Ops)
from filters.http.router.headers import apply_mutations


class HeaderMutationFilter:
    def __init__(self, config: HeaderMutationConfig, name: str) -> None:
        self.mutations = config.mutations
        self.most_specific_wins = config.most_specific_wins
        self.name = name                  # the key of its typed_per_filter_config

    async def __call__(self, request: Request, next: Handler, /) -> Response:
        levels: list[Mutations] = [self.mutations]
        entry = request.route
        if entry is not None:
            if entry.per_filter_config.get(self.name) is model.FILTER_DISABLED:
                return await next(request)
            levels += self.route_levels(entry)
        for mutations in levels:
            if mutations.request:
                request.headers = apply(request.headers, mutations.request)
        try:
            response = await next(request)
        except LocalReply as reply:
            for mutations in levels:
                if mutations.response:
                    reply.headers = apply(reply.headers, mutations.response)
            raise
        for mutations in levels:
            if mutations.response:
                response.headers = apply(response.headers, mutations.response)
        return response

    def route_levels(self, entry: Any) -> list[Mutations]:
        """The per-route configs of the route, its virtual host and its route config, most
        specific first (least specific first with most_specific_header_mutations_wins).

        The route entry keeps only the route's and virtual host's typed_per_filter_config;
        the route config's is the most specific one when neither of them has one.
        """
        name = self.name
        found: list[Mutations] = []
        for level in (entry.route, entry.vhost):
            config = dict(level.typed_per_filter_config).get(name)
            if isinstance(config, HeaderMutationPerRouteConfig):
                found.append(config.mutations)
        if not found:
            config = entry.per_filter_config.get(name)
            if isinstance(config, HeaderMutationPerRouteConfig):
                found.append(config.mutations)
        if self.most_specific_wins:
            found.reverse()
        return found


def apply(headers: list[tuple[str, str]], ops: Ops) -> list[tuple[str, str]]:
    for op in ops:
        headers = apply_mutations(headers, op)
    return headers
