"""http_connection_manager.http2_protocol_options -> model.Http2ProtocolOptions (downstream HTTP/2)."""

from __future__ import annotations

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, wrapped

_LIMIT = 2147483647
# field: (Envoy's default, lowest valid value), as Envoy's proto validation says.
_FIELDS = {
    "max_concurrent_streams": (_LIMIT, 1),
    "initial_stream_window_size": (268435456, 65535),
    "initial_connection_window_size": (268435456, 65535),
    "max_outbound_frames": (10000, 1),
    "max_outbound_control_frames": (1000, 1),
    "max_consecutive_inbound_frames_with_empty_payload": (1, 0),
    "max_inbound_priority_frames_per_stream": (100, 0),
    "max_inbound_window_update_frames_per_data_frame_sent": (10, 1),
}


class Http2OptionsTranslator(TranslatorBase):
    def http2_options(self, opts: Message, path: str) -> model.Http2ProtocolOptions:
        # allow_connect is accepted only as false: CONNECT is refused (as Envoy's default).
        self.only(opts, path, (*_FIELDS, "allow_connect"))
        if opts.allow_connect:
            self.error(f"{path}.allow_connect", "CONNECT is not supported by sidecar yet "
                       "(see docs/compatibility.md)")
        values = {}
        for name, (default, low) in _FIELDS.items():
            value = wrapped(opts, name, default)
            if not low <= value <= _LIMIT:
                self.error(f"{path}.{name}", f"value must be inside range [{low}, {_LIMIT}]")
                value = default
            values[name] = value
        return model.Http2ProtocolOptions(**values)
