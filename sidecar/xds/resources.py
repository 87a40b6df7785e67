"""xDS resources (protobuf ``Any``) -> model objects, with errors a human can act on.

An error names the resource and the field path inside it, e.g.
``Cluster 'backend': connect_timeout: ...``; that text goes back to the
control plane as the NACK's error_detail.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import symbol_database
from google.protobuf.message import Message

from config.bootstrap import ensure_type_imported
from config.errors import ConfigError
from config.translate import Translator
from filters.registry import http_filter_parser
from sidecar.xds.client import CLUSTER, ENDPOINT, LISTENER, ROUTE

KIND = {LISTENER: "Listener", ROUTE: "RouteConfiguration", CLUSTER: "Cluster",
        ENDPOINT: "ClusterLoadAssignment"}


def unpack(any_msg: Message) -> Message:
    """The concrete message in an Any; raises ValueError (bad type) or DecodeError (bad bytes)."""
    try:
        ensure_type_imported(any_msg.type_url)     # type: ignore[attr-defined]
    except ConfigError as e:
        raise ValueError(str(e)) from None
    cls = symbol_database.Default().GetSymbol(any_msg.type_url.rsplit("/", 1)[-1])  # type: ignore[attr-defined]
    message = cls()
    message.ParseFromString(any_msg.value)          # type: ignore[attr-defined]
    return message  # type: ignore[no-any-return]


def translate(type_url: str, name: str, any_msg: Message) -> Any:
    """One resource as the model object the runtime reads; raises ValueError naming what is wrong.

    Listener -> model.Listener, RouteConfiguration -> model.RouteConfig,
    Cluster -> model.Cluster, ClusterLoadAssignment -> tuple of model.Endpoint.
    """
    msg = unpack(any_msg)
    kind = KIND[type_url]
    own_name = getattr(msg, "cluster_name", "") if type_url == ENDPOINT else getattr(msg, "name", "")
    if own_name != name:
        raise ValueError(f"{kind} {name!r}: the resource is named {own_name!r}")
    t = Translator(http_filter_parser)
    result: Any
    if type_url == LISTENER:
        result = t.listener(msg, "")
    elif type_url == ROUTE:
        result = t.route_config(msg, "")
    elif type_url == CLUSTER:
        result = t.cluster(msg, "")
    else:
        result = t.load_assignment(msg, "", "EDS")
    if t.errors or result is None:
        details = "; ".join(str(e).lstrip(".") for e in t.errors) or "invalid"
        raise ValueError(f"{kind} {name!r}: {details}")
    return result

