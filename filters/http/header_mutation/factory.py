"""Parses envoy.extensions.filters.http.header_mutation.v3.HeaderMutation (the filter config) and
HeaderMutationPerRoute (typed_per_filter_config) and creates the filter.

Unlike the fault filter, per-route configs do not replace the filter's own: Envoy applies the
filter's mutations, then those of every level that has a per-route config, most specific
first (route, virtual host, route config), or least specific first with
most_specific_header_mutations_wins, so that the last one applied wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from config import model
from config.errors import ConfigError
from config.translate_routes import RouteTranslator
from filters.api import FilterContext, FilterFactory, HttpFilter

PACKAGE = "envoy.extensions.filters.http.header_mutation.v3"
PER_ROUTE_TYPE = f"{PACKAGE}.HeaderMutationPerRoute"

# One mutation each, applied in order (a remove after an append removes it again).
Ops = tuple[model.HeaderMutations, ...]


@dataclass(frozen=True, slots=True)
class Mutations:
    request: Ops = ()
    response: Ops = ()


@dataclass(frozen=True, slots=True)
class HeaderMutationConfig:
    """The filter-level config (HeaderMutation)."""

    mutations: Mutations = Mutations()
    most_specific_wins: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutationPerRouteConfig:
    """A typed_per_filter_config (HeaderMutationPerRoute)."""

    mutations: Mutations = Mutations()


class HeaderMutationFactory(FilterFactory[HeaderMutationConfig | HeaderMutationPerRouteConfig]):
    names = ("envoy.filters.http.header_mutation",)
    type_url = f"type.googleapis.com/{PACKAGE}.HeaderMutation"
    # typed_per_filter_config takes Envoy's ...PerRoute message: filters/registry.py maps
    # this type URL to the factory too (Envoy finds the factory by either type).
    per_route_type_urls = (f"type.googleapis.com/{PER_ROUTE_TYPE}",)
    per_route = True

    def parse(self, message: Message, path: str
              ) -> HeaderMutationConfig | HeaderMutationPerRouteConfig:
        t = RouteTranslator(lambda name, type_url: None)
        per_route_context = "typed_per_filter_config[" in path
        is_per_route = message.DESCRIPTOR.full_name == PER_ROUTE_TYPE
        if per_route_context != is_per_route and message.ListFields():
            # Envoy unpacks a per-route config as HeaderMutationPerRoute and the filter
            # config as HeaderMutation, whichever type it came as (an empty one passes).
            expected = PER_ROUTE_TYPE if per_route_context else f"{PACKAGE}.HeaderMutation"
            raise ConfigError(path, f"Unable to unpack as {expected}")
        if is_per_route:
            t.only(message, path, ("mutations",))
        else:
            t.only(message, path, ("mutations", "most_specific_header_mutations_wins"))
        mutations = self.mutations(t, message.mutations, f"{path}.mutations")
        if t.errors:
            raise t.errors[0]
        if per_route_context:
            return HeaderMutationPerRouteConfig(mutations)
        return HeaderMutationConfig(mutations, not is_per_route
                                    and message.most_specific_header_mutations_wins)

    def mutations(self, t: RouteTranslator, m: Message, path: str) -> Mutations:
        t.only(m, path, ("request_mutations", "response_mutations"))
        return Mutations(self.ops(t, m.request_mutations, f"{path}.request_mutations"),
                         self.ops(t, m.response_mutations, f"{path}.response_mutations"))

    @staticmethod
    def ops(t: RouteTranslator, items: list[Message], path: str) -> Ops:
        out = []
        for i, mutation in enumerate(items):
            p = f"{path}[{i}]"
            t.only(mutation, p, ("remove", "append"))
            which = mutation.WhichOneof("action")
            if which == "remove":
                name = mutation.remove.lower()
                if not name:
                    t.error(f"{p}.remove", "value length must be at least 1 characters")
                elif name.startswith(":") or name == "host":
                    t.error(f"{p}.remove", ":-prefixed or host headers may not be modified")
                out.append(model.HeaderMutations(remove=(name,)))
            elif which == "append":
                option = t.header_value_option(mutation.append, f"{p}.append")
                if option.name.startswith(":") or option.name == "host":
                    t.error(f"{p}.append.header.key",
                            ":-prefixed or host headers may not be modified")
                out.append(model.HeaderMutations(add=(option,)))
            elif which is None:
                t.error(p, "one of remove, append or remove_on_match is required")
        return tuple(out)

    def create(self, config: HeaderMutationConfig | HeaderMutationPerRouteConfig | None,
               ctx: FilterContext) -> HttpFilter:
        from filters.http.header_mutation.filter import HeaderMutationFilter
        if not isinstance(config, HeaderMutationConfig):
            config = HeaderMutationConfig()
        return HeaderMutationFilter(config, ctx.name)
