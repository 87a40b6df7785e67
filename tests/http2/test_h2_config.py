"""http_connection_manager codec_type and http2_protocol_options at load."""

from __future__ import annotations

from config import model
from tests.config.test_translate import basic, errors_of, translate


def hcm(config: dict) -> model.HttpConnectionManager:
    nf = translate(config).listeners[0].filter_chain.filter
    assert isinstance(nf, model.HttpConnectionManager)
    return nf


def test_codec_types():
    assert hcm(basic()).codec_type == "AUTO"
    assert hcm(basic(codec_type="HTTP1")).codec_type == "HTTP1"
    assert hcm(basic(codec_type="HTTP2")).codec_type == "HTTP2"
    assert any("codec_type" in e for e in errors_of(basic(codec_type="HTTP3")))


def test_http2_defaults_are_envoys():
    opts = hcm(basic(codec_type="HTTP2")).http2
    assert opts == model.Http2ProtocolOptions()
    assert (opts.max_concurrent_streams, opts.initial_stream_window_size,
            opts.initial_connection_window_size) == (2147483647, 268435456, 268435456)
    assert (opts.max_outbound_frames, opts.max_outbound_control_frames,
            opts.max_consecutive_inbound_frames_with_empty_payload,
            opts.max_inbound_priority_frames_per_stream,
            opts.max_inbound_window_update_frames_per_data_frame_sent) == (10000, 1000, 1, 100, 10)


def test_http2_options_are_read():
    opts = hcm(basic(codec_type="HTTP2", http2_protocol_options={
        "max_concurrent_streams": 7, "initial_stream_window_size": 65535,
        "initial_connection_window_size": 1048576, "max_outbound_frames": 50,
        "max_outbound_control_frames": 20,
        "max_consecutive_inbound_frames_with_empty_payload": 3,
        "max_inbound_priority_frames_per_stream": 5,
        "max_inbound_window_update_frames_per_data_frame_sent": 2,
        "allow_connect": False})).http2
    assert opts == model.Http2ProtocolOptions(7, 65535, 1048576, 50, 20, 3, 5, 2)


def test_http2_options_unsupported_or_out_of_range_fail_with_their_path():
    base = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http2_protocol_options"
    errors = errors_of(basic(http2_protocol_options={"hpack_table_size": 100}))
    assert any(e.startswith(f"{base}.hpack_table_size") for e in errors), errors
    errors = errors_of(basic(http2_protocol_options={"allow_connect": True}))
    assert any(e.startswith(f"{base}.allow_connect") for e in errors), errors
    errors = errors_of(basic(http2_protocol_options={"initial_stream_window_size": 100}))
    assert any(e.startswith(f"{base}.initial_stream_window_size") for e in errors), errors
    errors = errors_of(basic(http2_protocol_options={"max_concurrent_streams": 0}))
    assert any(e.startswith(f"{base}.max_concurrent_streams") for e in errors), errors
