"""envoy.filters.listener.original_dst: the address a connection was sent to before iptables
REDIRECT (netfilter's SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6)."""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80            # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80       # linux/netfilter_ipv6/ip6_tables.h
SOL_IPV6 = 41


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """(ip, port) the client connected to, or None without conntrack (Envoy then keeps the
    socket's own local address).  A socket that was not redirected reports its own address.

    A dual-stack IPv6 socket accepting an IPv4 client (an IPv4-mapped peer) is asked with
    the IPv4 option, as Envoy does.
    """
    try:
        local = sock.getsockname()
        if sock.family == socket.AF_INET6 and not local[0].startswith("::ffff:"):
            raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    except OSError:
        return None
