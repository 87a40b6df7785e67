"""Consistent hashing config -> model: a cluster's RING_HASH / MAGLEV settings and a
route's hash_policy list, with Envoy 1.40's validation messages."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, wrapped

MAX_RING_SIZE = 8 * 1024 * 1024         # RingHashLbConfig's lte bound and Envoy's default maximum
MAX_MAGLEV_TABLE_SIZE = 5000011


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def hash_lb_config(t: TranslatorBase, c: Message, path: str, lb: str) -> dict[str, Any]:
    """model.Cluster fields from ring_hash_lb_config, maglev_lb_config and
    common_lb_config.consistent_hashing_lb_config (read whatever the lb_policy, as
    Envoy validates them; used by RING_HASH / MAGLEV only)."""
    out: dict[str, Any] = {}
    if c.HasField("ring_hash_lb_config"):
        rp = f"{path}.ring_hash_lb_config"
        rh = c.ring_hash_lb_config
        t.only(rh, rp, ("minimum_ring_size", "maximum_ring_size", "hash_function"))
        low = wrapped(rh, "minimum_ring_size", 1024)
        high = wrapped(rh, "maximum_ring_size", MAX_RING_SIZE)
        for name, value in (("minimum_ring_size", low), ("maximum_ring_size", high)):
            if value > MAX_RING_SIZE:
                t.error(f"{rp}.{name}", f"value must be less than or equal to {MAX_RING_SIZE}")
        if lb == "RING_HASH" and low > high:
            t.error(rp, f"ring hash: minimum_ring_size ({low}) > maximum_ring_size ({high})")
        if rh.hash_function not in (0, 1):
            t.error(f"{rp}.hash_function", "value must be one of the defined enum values")
        out.update(ring_hash_minimum_ring_size=low, ring_hash_maximum_ring_size=high,
                   ring_hash_function="MURMUR_HASH_2" if rh.hash_function == 1 else "XX_HASH")
    if c.HasField("maglev_lb_config"):
        mp = f"{path}.maglev_lb_config"
        t.only(c.maglev_lb_config, mp, ("table_size",))
        size = wrapped(c.maglev_lb_config, "table_size", 65537)
        if size > MAX_MAGLEV_TABLE_SIZE:
            t.error(f"{mp}.table_size",
                    f"value must be less than or equal to {MAX_MAGLEV_TABLE_SIZE}")
        elif lb == "MAGLEV" and not is_prime(size):
            t.error(f"{mp}.table_size", "The table size of maglev must be prime number")
        out["maglev_table_size"] = size
    clc = c.common_lb_config
    if clc.HasField("consistent_hashing_lb_config"):
        hp = f"{path}.common_lb_config.consistent_hashing_lb_config"
        chc = clc.consistent_hashing_lb_config
        t.only(chc, hp, ("use_hostname_for_hashing", "hash_balance_factor"))
        if chc.HasField("hash_balance_factor"):
            factor = chc.hash_balance_factor.value
            if factor < 100:
                t.error(f"{hp}.hash_balance_factor", "value must be greater than or equal to 100")
            out["hash_balance_factor"] = factor
        if chc.use_hostname_for_hashing and c.type != 1:
            # Envoy: only STRICT_DNS hosts have a hostname to hash by.
            kind = {0: "static", 2: "logical_dns", 3: "eds", 4: "original_dst"}.get(c.type, "")
            t.error(f"{hp}.use_hostname_for_hashing", "Cannot use hostname for consistent "
                    f"hashing loadbalancing for cluster of type: 'envoy.cluster.{kind}'")
        out["use_hostname_for_hashing"] = chc.use_hostname_for_hashing
    return out


def hash_policies(t: Any, a: Message, path: str) -> tuple[model.HashPolicy, ...]:
    """RouteAction.hash_policy (``t`` is the RouteTranslator: its regex_rewrite is reused).

    connection_properties with source_ip false adds nothing, as in Envoy;
    filter_state is refused (no filter sets hashable state in sidecar).
    """
    out: list[model.HashPolicy] = []
    for i, hp in enumerate(a.hash_policy):
        p = f"{path}.hash_policy[{i}]"
        t.only(hp, p, ("header", "cookie", "connection_properties", "query_parameter", "terminal"))
        which = hp.WhichOneof("policy_specifier")
        terminal = hp.terminal
        if which == "header":
            h, hpath = hp.header, f"{p}.header"
            t.only(h, hpath, ("header_name", "regex_rewrite"))
            if not h.header_name:
                t.error(f"{hpath}.header_name", "value length must be at least 1 characters")
            out.append(model.HashPolicy("header", h.header_name.lower(),
                                        regex_rewrite=t.regex_rewrite(h, hpath), terminal=terminal))
        elif which == "cookie":
            ck, cpath = hp.cookie, f"{p}.cookie"
            t.only(ck, cpath, ("name", "ttl", "path", "attributes"))
            if not ck.name:
                t.error(f"{cpath}.name", "value length must be at least 1 characters")
            attributes = []
            for j, attr in enumerate(ck.attributes):
                if not attr.name:
                    t.error(f"{cpath}.attributes[{j}].name",
                            "value length must be at least 1 characters")
                attributes.append((attr.name, attr.value))
            out.append(model.HashPolicy(
                "cookie", ck.name, terminal=terminal, cookie_path=ck.path,
                # Envoy keeps whole seconds of the ttl
                cookie_ttl=ck.ttl.seconds if ck.HasField("ttl") else None,
                cookie_attributes=tuple(attributes)))
        elif which == "connection_properties":
            t.only(hp.connection_properties, f"{p}.connection_properties", ("source_ip",))
            if hp.connection_properties.source_ip:
                out.append(model.HashPolicy("source_ip", terminal=terminal))
        elif which == "query_parameter":
            q, qpath = hp.query_parameter, f"{p}.query_parameter"
            t.only(q, qpath, ("name",))
            if not q.name:
                t.error(f"{qpath}.name", "value length must be at least 1 characters")
            out.append(model.HashPolicy("query_parameter", q.name, terminal=terminal))
        elif which is None:
            t.error(p, "one of header, cookie, connection_properties, query_parameter or "
                    "filter_state is required")
    return tuple(out)


def endpoint_hash_key(lbe: Message) -> str:
    """An LbEndpoint's metadata.filter_metadata["envoy.lb"].hash_key: what RING_HASH and
    MAGLEV hash the host by instead of its address (Envoy ignores a non-string value)."""
    if not lbe.HasField("metadata"):
        return ""
    lb_metadata = lbe.metadata.filter_metadata.get("envoy.lb")
    if lb_metadata is None or "hash_key" not in lb_metadata.fields:
        return ""
    value = lb_metadata.fields["hash_key"]
    return value.string_value if value.WhichOneof("kind") == "string_value" else ""
