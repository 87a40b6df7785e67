"""What the SotW and Delta state machines share: nonces, wildcard rules, request log lines."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.xds_server.resources import CLUSTER, LISTENER, TYPE_ORDER, short_type

log = logging.getLogger("sidecar.xds_server")

# Only LDS and CDS have wildcard subscriptions (xDS protocol, "How the client
# specifies what resources to return"); "*" is the explicit form, and a first
# request naming nothing is the legacy form of the same thing.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
WILDCARD = "*"

# One counter for the whole server: nonces only need to be unique per stream,
# and small numbers are easy to follow in the log.
_nonces = itertools.count(1)


def next_nonce() -> str:
    return str(next(_nonces))


def push_order(type_urls: Mapping[str, Any]) -> list[str]:
    """Known types in make-before-break order (CDS, EDS, LDS, RDS), then any others by name."""
    known = [t for t in TYPE_ORDER if t in type_urls]
    return known + sorted(t for t in type_urls if t not in TYPE_ORDER)


def names_text(names: Iterable[str], limit: int = 8) -> str:
    """``[a,b,c]``, shortened after ``limit`` names so one log line stays one line."""
    items = sorted(names)
    shown = ",".join(items[:limit])
    more = f",... +{len(items) - limit} more" if len(items) > limit else ""
    return f"[{shown}{more}]"


def quoted(text: str) -> str:
    """A message as one double-quoted line (Envoy's NACK messages can hold newlines)."""
    return json.dumps(text, ensure_ascii=False)


class Peer:
    """Who is on the other end of a stream; the node id comes on the first request only."""

    def __init__(self, kind: str) -> None:
        self.kind = kind          # "sotw" or "delta", shown when the stream opens and closes
        self.node_id = ""

    def learn(self, node_id: str) -> None:
        if node_id and not self.node_id:
            self.node_id = node_id
            log.info("stream open (%s) node=%s", self.kind, node_id)

    def line(self, verb: str, type_url: str, **fields: str) -> str:
        """``ACK node=x type=Cluster version=v nonce=3``: the one log line per request or response."""
        parts = [verb, f"node={self.node_id or '?'}", f"type={short_type(type_url)}"]
        parts.extend(f"{key}={value}" for key, value in fields.items())
        return " ".join(parts)
