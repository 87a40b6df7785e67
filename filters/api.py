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

from config import model

from sidecar.http.local_reply import LocalReply
from sidecar.http.message import Request, Response

__all__ = ["Handler", "HttpFilter", "FilterFactory", "FilterContext", "LocalReply",
           "Request", "Response", "request_config"]

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


def request_config(request: Request, name: str, default: C, kind: type[C]) -> C | None:
    """The config a filter applies to this request: the route's most specific
    typed_per_filter_config under the filter's ``name`` when it is one of this
    filter's configs (``kind``: Envoy's dynamic_cast, a config of another
    filter's type is not this one's), else ``default``; None when the route
    disables the filter (FilterConfig{disabled: true})."""
    entry = request.route
    if entry is None:
        return default
    per_route = entry.per_filter_config.get(name)
    if per_route is model.FILTER_DISABLED:
        return None
    return per_route if isinstance(per_route, kind) else default
