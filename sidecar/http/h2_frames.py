"""The frames h2 queues for sending, serialized in one compiled pass.

h2 turns every frame it sends into bytes with hyperframe's ``serialize`` (a Python
method per frame, and one per flag).  ``serialize_frames`` writes the same bytes
(RFC 9113 4.1: 24-bit length, type, flags, stream id) for the frames a connection
sends per request: DATA and HEADERS without padding or priority, CONTINUATION,
WINDOW_UPDATE and RST_STREAM; any other frame (SETTINGS, PING, GOAWAY, or a padded
one) is left to hyperframe.  h2_state.py plugs it into h2's ``_prepare_for_sending``.
"""

from __future__ import annotations

from typing import Any, Final

from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, RstStreamFrame,
                              WindowUpdateFrame)

# Flag bits by name, for the frame types serialized here (RFC 9113 6).
_FLAG_BITS: Final = {"END_STREAM": 0x01, "END_HEADERS": 0x04, "PADDED": 0x08, "PRIORITY": 0x20}


def serialize_frames(frames: list[Any], max_frame_size: int) -> bytes:
    out = bytearray()
    for frame in frames:
        kind = type(frame)
        flags = 0
        if kind is DataFrame or kind is HeadersFrame or kind is ContinuationFrame:
            for name in frame.flags:
                flags |= _FLAG_BITS[name]
            if flags & 0x28:        # PADDED or PRIORITY: hyperframe's own layout
                out += _by_hyperframe(frame, max_frame_size)
                continue
            data = frame.data
            body: bytes = data if type(data) is bytes else bytes(data)
        elif kind is WindowUpdateFrame:
            body = (frame.window_increment & 0x7FFFFFFF).to_bytes(4, "big")
        elif kind is RstStreamFrame:
            body = int(frame.error_code).to_bytes(4, "big")
        else:
            out += _by_hyperframe(frame, max_frame_size)
            continue
        length = len(body)
        # h2's own check (an assert) that it never queues a frame the peer refuses.
        if length > max_frame_size:
            raise AssertionError(f"frame of {length} bytes over the peer's {max_frame_size}")
        out += length.to_bytes(3, "big")
        out.append(frame.type)
        out.append(flags)
        out += (frame.stream_id & 0x7FFFFFFF).to_bytes(4, "big")
        out += body
    return bytes(out)


def _by_hyperframe(frame: Any, max_frame_size: int) -> bytes:
    data: bytes = frame.serialize()
    if frame.body_len > max_frame_size:
        raise AssertionError(f"frame of {frame.body_len} bytes over the peer's {max_frame_size}")
    return data
