"""Config builders shared by the fault filter tests."""

from __future__ import annotations

from typing import Any

from tests.support.proxy import ROUTER, bootstrap, http_listener, static_cluster, vhost

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
FAULT_NAME = "envoy.filters.http.fault"


def fault(**fields: Any) -> dict[str, Any]:
    """An HTTPFault typed_config."""
    return {"@type": FAULT, **fields}


def abort(status: int = 503, numerator: int = 100, **fields: Any) -> dict[str, Any]:
    return fault(abort={"http_status": status, "percentage": {"numerator": numerator}}, **fields)


def fault_listener(name: str, fault_config: dict[str, Any] | None,
                   routes: list[dict[str, Any]] | None = None, cluster: str = "up",
                   access_log: str | None = None, filter_name: str = FAULT_NAME,
                   vhosts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An HTTP listener whose chain is the fault filter then the router."""
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
    hcm: dict[str, Any] = {}
    if access_log:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": access_log, "log_format": {"text_format":
                "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}]
    listener = http_listener(name, vhosts or [vhost(routes)], **hcm)
    typed = listener["filter_chains"][0]["filters"][0]["typed_config"]
    entry: dict[str, Any] = {"name": filter_name}
    if fault_config is not None:
        entry["typed_config"] = fault_config
    typed["http_filters"] = [entry, {"name": "envoy.filters.http.router",
                                     "typed_config": {"@type": ROUTER}}]
    return listener


def fault_bootstrap(*listeners: dict[str, Any], port: int = 9) -> dict[str, Any]:
    return bootstrap(list(listeners), [static_cluster("up", port)])


def hcm_of(config: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return config["static_resources"]["listeners"][index]["filter_chains"][0]["filters"][0][
        "typed_config"]
