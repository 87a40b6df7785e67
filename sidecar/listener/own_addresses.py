"""The addresses this process listens on, so an ORIGINAL_DST cluster never connects to itself.

A connection that reached a capture listener without an iptables redirect reports the
listener's own address as its original destination; proxying it "onward" would connect
back to the listener, again and again.
"""

from __future__ import annotations

import ipaddress
import socket

_exact: dict[tuple[str, int], int] = {}       # (ip, port) -> sockets bound there
_wildcard: dict[int, int] = {}                # port -> sockets bound on 0.0.0.0 / ::


def _norm(ip: str) -> str:
    return str(ipaddress.ip_address(ip.split("%", 1)[0]))


def add(ip: str, port: int) -> None:
    ip = _norm(ip)
    if ipaddress.ip_address(ip).is_unspecified:
        _wildcard[port] = _wildcard.get(port, 0) + 1
    else:
        _exact[(ip, port)] = _exact.get((ip, port), 0) + 1


def remove(ip: str, port: int) -> None:
    ip = _norm(ip)
    table: dict = _wildcard if ipaddress.ip_address(ip).is_unspecified else _exact
    key = port if table is _wildcard else (ip, port)
    if table.get(key, 0) <= 1:
        table.pop(key, None)
    else:
        table[key] -= 1


def is_own(ip: str, port: int) -> bool:
    """Whether connecting to ip:port would reach one of our listening sockets."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if (str(addr), port) in _exact:
        return True
    if port not in _wildcard:
        return False
    return addr.is_loopback or addr.is_unspecified or _is_local(addr)


def _is_local(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address of this host's interfaces: only those can be bound (without freebind)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(addr), 0))
        except OSError:
            return False
    return True
