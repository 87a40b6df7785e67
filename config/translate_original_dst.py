"""Cluster protobuf -> model for ORIGINAL_DST clusters (original_dst_lb_config, cleanup_interval)
and upstream_bind_config (any cluster: the source address of upstream connections)."""

from __future__ import annotations

import ipaddress
from typing import Any

from google.protobuf.message import Message

from config import model
from config.translate_base import seconds


def original_dst_fields(t: Any, c: Message, path: str, ctype: str, lb: str | None
                        ) -> dict[str, Any]:
    """The model.Cluster fields for ORIGINAL_DST and upstream_bind_config; checks as Envoy."""
    out: dict[str, Any] = {}
    if ctype == "ORIGINAL_DST":
        if lb != "CLUSTER_PROVIDED":
            t.error(f"{path}.lb_policy", f"cluster: LB policy {lb} is not valid for Cluster type "
                    "ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'")
        if c.HasField("load_assignment"):
            t.error(f"{path}.load_assignment", "ORIGINAL_DST clusters must have no load assignment "
                    "configured")
        for name in ("outlier_detection", "health_checks"):
            if c.HasField(name) if name == "outlier_detection" else len(c.health_checks):
                t.error(f"{path}.{name}", "not supported with ORIGINAL_DST clusters yet "
                        "(see docs/compatibility.md)")
        cfg = c.original_dst_lb_config
        t.only(cfg, f"{path}.original_dst_lb_config", ("use_http_header", "http_header_name"))
        if cfg.http_header_name and not cfg.use_http_header:
            t.error(f"{path}.original_dst_lb_config", "ORIGINAL_DST cluster: invalid config "
                    f"http_header_name={cfg.http_header_name} and use_http_header is false. Set "
                    "use_http_header to true if http_header_name is desired.")
        interval = seconds(c.cleanup_interval) if c.HasField("cleanup_interval") else 5.0
        if c.HasField("cleanup_interval") and interval <= 0:
            t.error(f"{path}.cleanup_interval", "value must be greater than 0s")
        out["original_dst"] = model.OriginalDst(
            use_http_header=cfg.use_http_header,
            http_header_name=cfg.http_header_name or "x-envoy-original-dst-host",
            cleanup_interval=interval)
    else:
        if lb == "CLUSTER_PROVIDED":
            t.error(f"{path}.lb_policy", f"cluster manager: cluster provided LB specified but "
                    f"cluster '{c.name}' did not provide one. Check cluster documentation.")
        for name in ("original_dst_lb_config", "cleanup_interval"):
            if c.HasField(name):
                t.error(f"{path}.{name}", "only ORIGINAL_DST clusters take it")
    if c.HasField("upstream_bind_config"):
        bc, bp = c.upstream_bind_config, f"{path}.upstream_bind_config"
        t.only(bc, bp, ("source_address",))
        sa = bc.source_address
        t.only(sa, f"{bp}.source_address", ("address", "port_value"))
        try:
            ipaddress.ip_address(sa.address)
        except ValueError:
            t.error(f"{bp}.source_address.address", f"malformed IP address: {sa.address}")
        if sa.port_value:
            t.error(f"{bp}.source_address.port_value", "only port 0 (any) is supported")
        out["upstream_bind_address"] = sa.address
    return out
