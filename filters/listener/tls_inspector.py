"""envoy.filters.listener.tls_inspector: SNI and ALPN from a TLS ClientHello, without
terminating TLS; a ClientHello sets transport_protocol "tls" (RFC 8446 4.1.2, RFC 6066 3,
RFC 7301 3.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_CLIENT_HELLO = 16 * 1024        # Envoy's default max_client_hello_size


@dataclass(slots=True)
class ClientHello:
    server_name: str = ""
    alpn: tuple[str, ...] = ()


# What inspect() answers when MAX_CLIENT_HELLO bytes arrived and the ClientHello is still not
# whole: Envoy counts client_hello_too_large and closes the connection.
TOO_LARGE = ClientHello()


def inspect(data: bytes, eof: bool = False) -> tuple[bool, ClientHello | None]:
    """(done, hello): hello is None when the bytes are not a TLS ClientHello (as BoringSSL
    also says of one declaring more than 16 KiB), TOO_LARGE when Envoy would stop reading."""
    if len(data) < 5:
        if eof or (data and data[0] != 0x16) or (len(data) >= 2 and data[1] != 3):
            return True, None
        return False, None
    if data[0] != 0x16 or data[1] != 3:
        return True, None
    # The handshake message may span records; gather record payloads until it is whole.
    payload = b""
    pos = 0
    while len(data) >= pos + 5:
        if data[pos] != 0x16:
            return True, None
        length = struct.unpack_from("!H", data, pos + 3)[0]
        part = data[pos + 5:pos + 5 + length]
        payload += part
        if len(payload) >= 4:
            if payload[0] != 1:           # not a ClientHello
                return True, None
            size = int.from_bytes(payload[1:4], "big")
            if size > MAX_CLIENT_HELLO:
                return True, None
            if len(payload) >= 4 + size:
                # Envoy reads at most MAX_CLIENT_HELLO raw bytes (record headers included).
                used = pos + 5 + 4 + size - (len(payload) - len(part))
                if used > MAX_CLIENT_HELLO:
                    return True, TOO_LARGE
                return True, _parse(payload[4:4 + size])
        if len(part) < length:
            break
        pos += 5 + length
    if len(data) >= MAX_CLIENT_HELLO:
        return True, TOO_LARGE
    return (True, None) if eof else (False, None)


def _parse(body: bytes) -> ClientHello | None:
    hello = ClientHello()
    try:
        pos = 2 + 32                                 # legacy_version, random
        pos += 1 + body[pos]                         # session id
        pos += 2 + struct.unpack_from("!H", body, pos)[0]   # cipher suites
        pos += 1 + body[pos]                         # compression methods
        if pos >= len(body):
            return hello                             # no extensions
        end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
        pos += 2
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack_from("!HH", body, pos)
            ext = body[pos + 4:pos + 4 + ext_len]
            pos += 4 + ext_len
            if ext_type == 0 and len(ext) >= 5:      # server_name: list of (type, name)
                p = 2
                while p + 3 <= len(ext):
                    kind, n = ext[p], struct.unpack_from("!H", ext, p + 1)[0]
                    if kind == 0:
                        hello.server_name = ext[p + 3:p + 3 + n].decode("ascii", "replace").lower()
                        break
                    p += 3 + n
            elif ext_type == 16 and len(ext) >= 2:   # application_layer_protocol_negotiation
                p = 2
                names = []
                while p < len(ext):
                    n = ext[p]
                    names.append(ext[p + 1:p + 1 + n].decode("ascii", "replace"))
                    p += 1 + n
                hello.alpn = tuple(names)
    except (IndexError, struct.error):
        return None
    return hello
