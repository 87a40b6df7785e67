"""The HTTP filter interface: onion-style coroutines, ``await next(request)`` is "continue".

Three lifetimes, as in Envoy: parsed config (per config version), filter
instance (per filter chain, holds config and stats), per-request state
(coroutine locals only, never on ``self``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from google.protobuf.message import Message

from sidecar.http.local_reply import LocalReply
from sidecar.http.message import Request, Response

__all__ = ["Handler", "HttpFilter", "FilterFactory", "FilterContext", "LocalReply",
           "Request", "Response"]

Handler = Callable[[Request], Awaitable[Response]]
C = TypeVar("C")


class HttpFilter(Protocol):
    async def __call__(self, request: Request, next: Handler, /) -> Response: ...


@dataclass(frozen=True, slots=True)
class FilterContext:
    """What a filter instance may use: the cluster manager, stats, the connection manager config."""

    cluster_manager: Any
    stats: Any
    hcm: Any
    name: str = ""          # the filter's name in http_filters: the key of its per-route configs
    buffer_limit: int = 1024 * 1024     # the listener's per_connection_buffer_limit_bytes


class FilterFactory(Generic[C]):
    """One per filter kind; registered in filters/registry.py."""

    names: ClassVar[tuple[str, ...]] = ()
    type_url: ClassVar[str] = ""
    terminal: ClassVar[bool] = False     # the router: ends the chain, takes no ``next``
    # Reads typed_per_filter_config on routes and virtual hosts (parsed with ``parse``);
    # per-route config for a filter without it is an error at load, as in Envoy.
    per_route: ClassVar[bool] = False
    # Per-route message types other than ``type_url`` (Envoy's ...PerRoute, CorsPolicy):
    # the registry finds this factory by them too.
    per_route_type_urls: ClassVar[tuple[str, ...]] = ()

    def parse(self, message: Message, path: str) -> C:
        """Protobuf -> frozen config; raise config.errors.ConfigError(path, ...) when invalid."""
        raise NotImplementedError

    def create(self, config: C, ctx: FilterContext) -> HttpFilter | Handler:
        """A filter instance for one filter chain (called once per chain)."""
        raise NotImplementedError
