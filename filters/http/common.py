"""What several HTTP filters share: fractional percentages, header options.

Kept here so that filters do not import from one another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from config import model
from config.translate_routes import RouteTranslator

# envoy.type.v3.FractionalPercent.DenominatorType: HUNDRED, TEN_THOUSAND, MILLION.
DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


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


def header_options(t: RouteTranslator, items: Iterable[Message], path: str,
                   limit: int = 10) -> tuple[model.HeaderValueOption, ...]:
    """A repeated HeaderValueOption (at most ``limit``), plain values only."""
    out = []
    for i, hv in enumerate(items):
        if i == limit:
            t.error(path, f"value must contain no more than {limit} item(s)")
        out.append(t.header_value_option(hv, f"{path}[{i}]"))
    return tuple(out)
