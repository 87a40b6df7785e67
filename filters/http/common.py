"""What several HTTP filters share: fractional percentages, gRPC detection, header options.

Kept here so that filters do not import from one another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from config import model
from config.translate_routes import RouteTranslator
from sidecar.http.message import Request

# envoy.type.v3.FractionalPercent.DenominatorType: HUNDRED, TEN_THOUSAND, MILLION.
DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
APPEND_ACTIONS = {0: "APPEND_IF_EXISTS_OR_ADD", 1: "ADD_IF_ABSENT",
                  2: "OVERWRITE_IF_EXISTS_OR_ADD", 3: "OVERWRITE_IF_EXISTS"}
# Envoy's Grpc::Utility::httpToGrpcStatus (the gRPC HTTP status mapping); others are UNKNOWN.
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


@dataclass(frozen=True, slots=True)
class Percent:
    """A FractionalPercent: ``numerator`` out of ``denominator`` requests."""

    numerator: int = 0
    denominator: int = 100


def fractional_percent(t: RouteTranslator, pct: Message, path: str) -> Percent:
    """An envoy.type.v3.FractionalPercent."""
    t.only(pct, path, ("numerator", "denominator"))
    denominator = DENOMINATORS.get(pct.denominator)
    if denominator is None:
        t.error(f"{path}.denominator", "value must be one of the defined enum values")
        denominator = 100
    return Percent(pct.numerator, denominator)


def runtime_percent(t: RouteTranslator, m: Message, name: str, path: str) -> Percent | None:
    """A RuntimeFractionalPercent field's default_value (sidecar has no runtime: runtime_key
    names an override that never exists); None when unset."""
    if not m.HasField(name):
        return None
    rfp, p = getattr(m, name), f"{path}.{name}"
    t.only(rfp, p, ("default_value", "runtime_key"))
    return fractional_percent(t, rfp.default_value, f"{p}.default_value")


def is_grpc(request: Request) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: application/grpc, or it followed by + or ;."""
    content_type = request.header("content-type")
    if content_type is None or not content_type.startswith("application/grpc"):
        return False
    return len(content_type) == 16 or content_type[16] in "+;"


def header_options(t: RouteTranslator, items: Iterable[Message], path: str,
                   limit: int = 10) -> tuple[model.HeaderValueOption, ...]:
    """A repeated HeaderValueOption (at most ``limit``), plain values only."""
    out = []
    for i, hv in enumerate(items):
        if i == limit:
            t.error(path, f"value must contain no more than {limit} item(s)")
        out.append(header_option(t, hv, f"{path}[{i}]"))
    return tuple(out)


def header_option(t: RouteTranslator, hv: Message, path: str) -> model.HeaderValueOption:
    """One HeaderValueOption, as the route's *_headers_to_add (no %...% formatters yet)."""
    t.only(hv, path, ("header", "append", "append_action", "keep_empty_value"))
    t.only(hv.header, f"{path}.header", ("key", "value", "raw_value"))
    key = hv.header.key.lower()
    if not key:
        t.error(f"{path}.header.key", "value length must be at least 1 characters")
    action = APPEND_ACTIONS.get(hv.append_action, "APPEND_IF_EXISTS_OR_ADD")
    if hv.HasField("append"):   # deprecated BoolValue: false means overwrite
        action = "APPEND_IF_EXISTS_OR_ADD" if hv.append.value else "OVERWRITE_IF_EXISTS_OR_ADD"
    value = hv.header.value or hv.header.raw_value.decode("latin-1")
    if "%" in value:
        t.error(f"{path}.header.value", "header formatters (%...%) are not supported yet")
    return model.HeaderValueOption(key, value, action, hv.keep_empty_value)
