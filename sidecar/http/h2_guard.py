"""HTTP/2 abuse accounting for one downstream connection: Envoy's flood limits and premature resets.

Pure bookkeeping (no I/O): the connection manager reports what it saw and
sent, and closes the connection when a check names a stat to count.

- Inbound floods (http2_protocol_options, Envoy's defaults): more consecutive
  frames with an empty payload than ``max_consecutive_inbound_frames_with_empty_payload``;
  PRIORITY frames beyond ``max_inbound_priority_frames_per_stream`` x (1 + streams
  opened); WINDOW_UPDATE frames beyond 5 + 2 x (streams opened +
  ``max_inbound_window_update_frames_per_data_frame_sent`` x DATA frames sent).
- Outbound floods: frames waiting in the write buffer beyond ``max_outbound_frames``,
  or control frames (PING/SETTINGS acks, RST_STREAM, WINDOW_UPDATE, GOAWAY) beyond
  ``max_outbound_control_frames``: a peer that makes us answer but does not read.
  The transport's buffer is only seen as a byte count, so each write made while it
  is backed up is remembered until the bytes drained past its end.
- Premature resets (CVE-2023-44487, "rapid reset"): Envoy's
  ``overload.premature_reset_total_stream_count`` (500) and
  ``overload.premature_reset_min_stream_lifetime_seconds`` (1).  A stream the
  client reset before it got a response, within its first second (Envoy compares
  whole seconds: under 2 s), is premature; once half of ``limit`` streams, or half
  of all the closed streams past ``limit``, were premature the connection is
  aborted (``downstream_rq_too_many_premature_resets``).
"""

from __future__ import annotations

from collections import deque

from config import model

PREMATURE_RESET_TOTAL_STREAM_COUNT = 500
PREMATURE_RESET_MIN_STREAM_LIFETIME = 1     # seconds, compared in whole seconds as Envoy

# Frame types that are control frames for the outbound limit (RFC 9113 6).
_CONTROL = frozenset((0x3, 0x4, 0x6, 0x7, 0x8))     # RST_STREAM SETTINGS PING GOAWAY WINDOW_UPDATE


def count_frames(data: bytes) -> tuple[int, int]:
    """(frames, control frames) in a run of serialized frames (only what we wrote)."""
    frames = control = 0
    offset = 0
    end = len(data)
    while offset + 9 <= end:
        frames += 1
        if data[offset + 3] in _CONTROL:
            control += 1
        offset += 9 + int.from_bytes(data[offset:offset + 3], "big")
    return frames, control


class FloodGuard:
    __slots__ = ("opts", "inbound_streams", "empty_frames", "priority_frames",
                 "window_update_frames", "data_frames_sent", "queued_frames", "queued_control",
                 "written_total", "queued",
                 "closed_streams", "premature_resets")

    def __init__(self, opts: model.Http2ProtocolOptions) -> None:
        self.opts = opts
        self.inbound_streams = 0
        self.empty_frames = 0           # consecutive frames with an empty payload
        self.priority_frames = 0
        self.window_update_frames = 0
        self.data_frames_sent = 0
        self.queued_frames = 0          # frames still in the write buffer (at most)
        self.queued_control = 0
        self.written_total = 0          # bytes ever written
        # (written_total at the end of a write, its frames, its control frames)
        self.queued: deque[tuple[int, int, int]] = deque()
        self.closed_streams = 0
        self.premature_resets = 0

    # --- inbound: each returns the http2.* stat to count when the peer floods, else "" ---------

    def empty_frame(self) -> str:
        self.empty_frames += 1
        if self.empty_frames > self.opts.max_consecutive_inbound_frames_with_empty_payload:
            return "inbound_empty_frames_flood"
        return ""

    def payload_frame(self) -> None:
        self.empty_frames = 0

    def priority_frame(self) -> str:
        self.priority_frames += 1
        if self.priority_frames > self.opts.max_inbound_priority_frames_per_stream * (
                1 + self.inbound_streams):
            return "inbound_priority_frames_flood"
        return ""

    def window_update_frame(self) -> str:
        self.window_update_frames += 1
        limit = 5 + 2 * (self.inbound_streams + self.opts.max_inbound_window_update_frames_per_data_frame_sent
                         * self.data_frames_sent)
        if self.window_update_frames > limit:
            return "inbound_window_update_frames_flood"
        return ""

    # --- outbound ----------------------------------------------------------------------

    def written(self, data: bytes, backlog: int) -> str:
        """``data`` was just written and ``backlog`` bytes still wait in the write buffer."""
        self.written_total += len(data)
        if not backlog:
            if self.queued:
                self.queued.clear()
                self.queued_frames = self.queued_control = 0
            return ""
        # Writes whose last byte has left the buffer no longer count.
        drained = self.written_total - backlog
        queued = self.queued
        while queued and queued[0][0] <= drained:
            _, frames, control = queued.popleft()
            self.queued_frames -= frames
            self.queued_control -= control
        frames, control = count_frames(data)
        queued.append((self.written_total, frames, control))
        self.queued_frames += frames
        self.queued_control += control
        if self.queued_control > self.opts.max_outbound_control_frames:
            return "outbound_control_flood"
        if self.queued_frames > self.opts.max_outbound_frames:
            return "outbound_flood"
        return ""

    # --- premature resets -------------------------------------------------------------------

    def stream_closed(self, premature: bool) -> bool:
        """One stream ended (not one we reset ourselves); True: abort the connection."""
        self.closed_streams += 1
        if premature:
            self.premature_resets += 1
        if not self.premature_resets:
            return False
        limit = PREMATURE_RESET_TOTAL_STREAM_COUNT
        if self.closed_streams < limit:
            # Even if every later stream were good, the limit would be hit: close now.
            return self.premature_resets * 2 >= limit
        return self.premature_resets * 2 >= self.closed_streams


def is_premature(lifetime: float, responded: bool) -> bool:
    """Envoy's isPrematureRstStream: reset with no response within the minimum lifetime."""
    return not responded and int(lifetime) <= PREMATURE_RESET_MIN_STREAM_LIFETIME
