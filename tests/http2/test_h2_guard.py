"""h2_guard: Envoy's flood limits and premature-reset accounting, without sockets."""

from __future__ import annotations

from config import model
from sidecar.http.h2_guard import FloodGuard, count_frames, is_premature


def frame(kind: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + b"\0\0\0\0" + payload


def test_empty_frames_limit_counts_consecutive_frames_only():
    g = FloodGuard(model.Http2ProtocolOptions(max_consecutive_inbound_frames_with_empty_payload=2))
    assert g.empty_frame() == "" and g.empty_frame() == ""
    g.payload_frame()
    assert g.empty_frame() == "" and g.empty_frame() == ""
    assert g.empty_frame() == "inbound_empty_frames_flood"


def test_priority_limit_grows_with_streams():
    g = FloodGuard(model.Http2ProtocolOptions(max_inbound_priority_frames_per_stream=2))
    assert all(g.priority_frame() == "" for _ in range(2))
    assert g.priority_frame() == "inbound_priority_frames_flood"
    g = FloodGuard(model.Http2ProtocolOptions(max_inbound_priority_frames_per_stream=2))
    g.inbound_streams = 1
    assert all(g.priority_frame() == "" for _ in range(4))
    assert g.priority_frame() == "inbound_priority_frames_flood"


def test_window_update_limit_is_envoys_formula():
    g = FloodGuard(model.Http2ProtocolOptions())
    g.inbound_streams = 1
    assert all(g.window_update_frame() == "" for _ in range(7))      # 5 + 2 * 1
    assert g.window_update_frame() == "inbound_window_update_frames_flood"
    g = FloodGuard(model.Http2ProtocolOptions())
    g.data_frames_sent = 1                                              # 5 + 2 * 10
    assert all(g.window_update_frame() == "" for _ in range(25))
    assert g.window_update_frame() == "inbound_window_update_frames_flood"


def test_outbound_frames_count_only_while_backed_up():
    g = FloodGuard(model.Http2ProtocolOptions(max_outbound_frames=5, max_outbound_control_frames=3))
    pings = frame(6, b"x" * 8) * 3
    assert count_frames(pings + frame(0, b"data")) == (4, 3)
    assert g.written(pings * 10, 0) == ""            # all flushed: nothing queued
    assert g.written(pings, 10_000) == ""
    assert g.written(frame(6, b"x" * 8), 10_000) == "outbound_control_flood"
    g = FloodGuard(model.Http2ProtocolOptions(max_outbound_frames=5, max_outbound_control_frames=3))
    assert g.written(frame(0, b"d") * 5, 10_000) == ""
    assert g.written(frame(0, b"d"), 10_000) == "outbound_flood"
    assert g.written(b"", 0) == "" and g.queued_frames == 0


def test_outbound_frames_that_drained_stop_counting():
    """Under steady load the buffer may never be empty at a write: frames that left it
    must not add up to a flood."""
    g = FloodGuard(model.Http2ProtocolOptions(max_outbound_frames=5, max_outbound_control_frames=3))
    one = frame(0, b"d" * 91)                       # 100 bytes
    for _ in range(100):
        # Each write leaves only itself in the buffer: the earlier ones drained.
        assert g.written(one, len(one)) == ""
    assert g.queued_frames == 1
    for _ in range(4):                              # now nothing drains: 2, 3, 4, 5 queued
        assert g.written(one, 10_000) == ""
    assert g.written(one, 10_000) == "outbound_flood"


def test_premature_resets_close_at_half_of_500():
    g = FloodGuard(model.Http2ProtocolOptions())
    assert not any(g.stream_closed(True) for _ in range(249))
    assert g.stream_closed(True)


def test_good_streams_dilute_premature_resets():
    g = FloodGuard(model.Http2ProtocolOptions())
    for _ in range(600):
        assert not g.stream_closed(False)
    assert not any(g.stream_closed(True) for _ in range(300))   # 300 * 2 < 900
    assert not any(g.stream_closed(True) for _ in range(299))
    assert g.stream_closed(True)                                   # 600 * 2 >= 1200


def test_premature_is_reset_without_response_within_a_second():
    assert is_premature(0.01, responded=False)
    assert is_premature(1.9, responded=False)        # whole seconds, as Envoy compares
    assert not is_premature(2.0, responded=False)
    assert not is_premature(0.01, responded=True)
