"""Which filter chain takes a connection: Envoy's filter_chain_match order, most specific first.

Envoy narrows the chains level by level, in this order: destination port, destination IP
(longest prefix), server name (exact, then the longest ``*.`` suffix), transport protocol,
application protocols, source IP (longest prefix), source port.  At each level the chains
that name the connection's value most specifically win; a chain that leaves the field
empty matches anything, least specifically.  The search never backtracks: when the winners
of one level all fail a later level, no chain matches (the default chain, if any, takes it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from config import model

_ANY = model.FilterChainMatch()


@dataclass(slots=True)
class ConnectionFacts:
    """What the listener (and its listener filters) know about a new connection."""
    destination_ip: Any                 # ipaddress.IPv4Address | IPv6Address
    destination_port: int
    source_ip: Any
    source_port: int
    server_name: str = ""               # SNI, from tls_inspector
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()


def ip_of(text: str) -> Any:
    """An address from a socket tuple; an IPv4-mapped IPv6 address counts as IPv4 (as Envoy)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _prefix_score(networks: tuple[Any, ...], ip: Any) -> int | None:
    if not networks:
        return -1
    best = None
    for net in networks:
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best):
            best = net.prefixlen
    return best


def _server_name_score(names: tuple[str, ...], sni: str) -> int | None:
    if not names:
        return -1
    if sni and sni in names:
        return 1 << 16
    best = None
    for name in names:
        if name.startswith("*.") and sni.endswith(name[1:]) and len(sni) > len(name) - 1:
            if best is None or len(name) > best:
                best = len(name)
    return best


_LEVELS: tuple[Callable[[model.FilterChainMatch, ConnectionFacts], int | None], ...] = (
    lambda m, f: -1 if m.destination_port is None else (1 if m.destination_port == f.destination_port
                                                        else None),
    lambda m, f: _prefix_score(m.prefix_ranges, f.destination_ip),
    lambda m, f: _server_name_score(m.server_names, f.server_name),
    lambda m, f: -1 if not m.transport_protocol else (1 if m.transport_protocol == f.transport_protocol
                                                      else None),
    lambda m, f: -1 if not m.application_protocols else (
        1 if any(p in m.application_protocols for p in f.application_protocols) else None),
    lambda m, f: _prefix_score(m.source_prefix_ranges, f.source_ip),
    lambda m, f: -1 if not m.source_ports else (1 if f.source_port in m.source_ports else None),
)


def select_chain(chains: Sequence[model.FilterChain], default: model.FilterChain | None,
                 facts: ConnectionFacts) -> model.FilterChain | None:
    """The chain for this connection, the default chain, or None (Envoy closes it)."""
    candidates = list(chains)
    for level in _LEVELS:
        best: int | None = None
        winners: list[model.FilterChain] = []
        for chain in candidates:
            score = level(chain.match or _ANY, facts)
            if score is None:
                continue
            if best is None or score > best:
                best, winners = score, [chain]
            elif score == best:
                winners.append(chain)
        if not winners:
            return default
        candidates = winners
    return candidates[0]
