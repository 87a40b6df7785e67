"""Parses envoy.extensions.filters.http.router.v3.Router and creates the router handler."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from config.errors import ConfigError
from filters.api import FilterContext, FilterFactory, Handler


@dataclass(frozen=True, slots=True)
class RouterConfig:
    suppress_envoy_headers: bool = False


class RouterFactory(FilterFactory[RouterConfig]):
    names = ("envoy.filters.http.router", "envoy.router")
    type_url = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    terminal = True

    def parse(self, message: Message, path: str) -> RouterConfig:
        for fd, _ in message.ListFields():
            if fd.name not in ("suppress_envoy_headers", "dynamic_stats", "start_child_span"):
                raise ConfigError(f"{path}.{fd.name}", "not supported by sidecar yet")
        return RouterConfig(suppress_envoy_headers=message.suppress_envoy_headers)

    def create(self, config: RouterConfig | None, ctx: FilterContext) -> Handler:
        from filters.http.router.filter import Router
        return Router(config or RouterConfig(), ctx)
