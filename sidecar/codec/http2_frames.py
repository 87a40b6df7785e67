"""HTTP/2's wire vocabulary (RFC 9113) for our connection (codec/http2.py): frame types,
flags, error codes and settings, and the rules it applies to single values: whether a
received setting is valid, what content-length a header block announces, and when consumed
bytes are handed back as window (h2's WindowManager rule, which it keeps)."""

from __future__ import annotations

from typing import Any, Final

from h2.exceptions import ProtocolError

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (RFC 9113 7) used here.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5

# Settings (RFC 9113 6.5.2).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
# No limit until the peer's SETTINGS say otherwise (h2's stand-in for "unlimited").
UNLIMITED_STREAMS: Final = 2**32 + 1
def window_increment(window: int, max_window: int, processed: int) -> int:
    """h2's WindowManager rule: how much window to hand back now that ``processed`` bytes
    were consumed; -1 to wait (the bytes stay counted).  Back once half the window was
    consumed, or once the window is shut and a little (1 KiB, or a quarter) was."""
    if not processed:
        return 0
    if (window == 0 and processed > min(1024, max_window // 4)) or processed >= max_window // 2:
        room = max_window - window
        return processed if processed < room else room
    return -1


def content_length(headers: list[Any]) -> int:
    """The content-length a header block announces (-1: none), as h2 reads it."""
    length = -1
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise ProtocolError(f"Invalid content-length header: {value!r}")
            parsed = int(value)
            if length < 0:
                length = parsed
            elif parsed != length:
                raise ProtocolError(f"Conflicting content-length headers: {length} and {parsed}")
    return length


def setting_error(code: int, value: int, client_side: bool) -> int:
    """The error code a received setting's value earns (0: valid), as h2 validates it."""
    if code == ENABLE_PUSH:
        if value > 1 or (client_side and value != 0):
            return PROTOCOL_ERROR
    elif code == INITIAL_WINDOW_SIZE:
        if value > MAX_WINDOW:
            return FLOW_CONTROL_ERROR
    elif code == MAX_FRAME_SIZE:
        if not 16384 <= value <= 16777215:
            return PROTOCOL_ERROR
    elif code == ENABLE_CONNECT_PROTOCOL and value > 1:
        return PROTOCOL_ERROR
    return 0
