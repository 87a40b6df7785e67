"""This host's own addresses, as Envoy works out its "local address" at startup."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from functools import lru_cache

_SIOCGIFADDR = 0x8915


@lru_cache(maxsize=None)
def local_address() -> str:
    """The first non-loopback IPv4 address of an interface, else 127.0.0.1.

    Envoy (Network::Utility::getLocalAddress) uses it, for instance, as the
    x-forwarded-for entry of a request that came over loopback.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue          # no IPv4 address on this interface
            address = socket.inet_ntoa(packed[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                return address
    return "127.0.0.1"


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
