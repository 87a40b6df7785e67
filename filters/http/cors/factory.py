"""Parses envoy.extensions.filters.http.cors.v3.Cors (the filter config: empty) and CorsPolicy
(typed_per_filter_config of a route, virtual host or route config) and creates the filter.

The policy is per route only: without one the filter does nothing.  Every field is taken
from the most specific level that sets it (Envoy's CorsFilter accessors), while
filter_enabled and shadow_enabled come from the most specific policy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from config.errors import ConfigError
from config.matchers import StringMatcher
from config.translate_routes import RouteTranslator
from filters.api import FilterContext, FilterFactory, HttpFilter
from filters.http.common import Percent, runtime_percent

PACKAGE = "envoy.extensions.filters.http.cors.v3"
POLICY_TYPE = f"{PACKAGE}.CorsPolicy"
FILTER_TYPE = f"{PACKAGE}.Cors"


@dataclass(frozen=True, slots=True)
class CorsFilterConfig:
    """The filter-level config (Cors): nothing to configure."""


@dataclass(frozen=True, slots=True)
class CorsPolicyConfig:
    """One level's CorsPolicy; None (or empty) fields are taken from a less specific level."""

    allow_origins: tuple[StringMatcher, ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool | None = None
    allow_private_network_access: bool | None = None
    forward_not_matching_preflights: bool | None = None
    filter_enabled: Percent | None = None       # None: enabled (100%)
    shadow_enabled: Percent | None = None       # None: not in shadow mode


class CorsFactory(FilterFactory[CorsFilterConfig | CorsPolicyConfig]):
    names = ("envoy.filters.http.cors",)
    type_url = f"type.googleapis.com/{FILTER_TYPE}"
    # typed_per_filter_config takes a CorsPolicy: filters/registry.py maps this type URL
    # to the factory too (Envoy finds the factory by either type).
    per_route_type_urls = (f"type.googleapis.com/{POLICY_TYPE}",)
    per_route = True

    def parse(self, message: Message, path: str) -> CorsFilterConfig | CorsPolicyConfig:
        per_route_context = "typed_per_filter_config[" in path
        is_policy = message.DESCRIPTOR.full_name == POLICY_TYPE
        if per_route_context != is_policy and message.ListFields():
            # Envoy unpacks a per-route config as CorsPolicy and the filter config as
            # Cors, whichever type it came as (an empty message passes).
            raise ConfigError(path, "Unable to unpack as "
                              f"{POLICY_TYPE if per_route_context else FILTER_TYPE}")
        if not per_route_context:
            return CorsFilterConfig()
        if not is_policy:
            return CorsPolicyConfig()
        t = RouteTranslator(lambda name, type_url: None)
        m = message
        t.only(m, path, ("allow_origin_string_match", "allow_methods", "allow_headers",
                         "expose_headers", "max_age", "allow_credentials", "filter_enabled",
                         "shadow_enabled", "allow_private_network_access",
                         "forward_not_matching_preflights"))
        origins = tuple(sm for i, o in enumerate(m.allow_origin_string_match)
                        if (sm := t.string_matcher(o, f"{path}.allow_origin_string_match[{i}]"))
                        is not None)
        enabled = runtime_percent(t, m, "filter_enabled", path)
        shadow = runtime_percent(t, m, "shadow_enabled", path)
        if t.errors:
            raise t.errors[0]

        def flag(name: str) -> bool | None:
            return getattr(m, name).value if m.HasField(name) else None

        return CorsPolicyConfig(
            allow_origins=origins, allow_methods=m.allow_methods, allow_headers=m.allow_headers,
            expose_headers=m.expose_headers, max_age=m.max_age,
            allow_credentials=flag("allow_credentials"),
            allow_private_network_access=flag("allow_private_network_access"),
            forward_not_matching_preflights=flag("forward_not_matching_preflights"),
            filter_enabled=enabled, shadow_enabled=shadow)

    def create(self, config: CorsFilterConfig | CorsPolicyConfig | None,
               ctx: FilterContext) -> HttpFilter:
        from filters.http.cors.filter import CorsFilter
        from sidecar.stats import CorsStats
        return CorsFilter(ctx.name, ctx.stats.filter_scope(CorsStats))
