"""Envoy filter name / type URL -> factory. Adding a filter is one folder plus one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from filters.api import FilterFactory
from filters.http.cors.factory import CorsFactory
from filters.http.fault.factory import FaultFactory
from filters.http.header_mutation.factory import HeaderMutationFactory
from filters.http.local_ratelimit.factory import LocalRateLimitFactory
from filters.http.rbac.factory import RbacFactory
from filters.http.router.factory import RouterFactory

HTTP_FILTERS: tuple[FilterFactory[Any], ...] = (
    RbacFactory(),
    FaultFactory(),
    LocalRateLimitFactory(),
    HeaderMutationFactory(),
    CorsFactory(),
    RouterFactory(),
)

_BY_KEY: dict[str, FilterFactory[Any]] = {}
for _factory in HTTP_FILTERS:
    _BY_KEY[_factory.type_url] = _factory
    # A per-route message type (Envoy's ...PerRoute) finds its factory too, as in Envoy.
    for _url in _factory.per_route_type_urls:
        _BY_KEY[_url] = _factory
    for _name in _factory.names:
        _BY_KEY[_name] = _factory


def http_filter_factory(name: str, type_url: str) -> FilterFactory[Any] | None:
    """The factory for a filter: its typed_config type URL decides, else its name (as Envoy)."""
    if type_url:
        return _BY_KEY.get(type_url)
    return _BY_KEY.get(name)


def http_filter_parser(name: str, type_url: str) -> Callable[[Message, str], Any] | None:
    """The lookup config.translate needs (config/ imports nothing of ours)."""
    factory = http_filter_factory(name, type_url)
    return factory.parse if factory else None
