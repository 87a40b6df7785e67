"""What the peer did, as our HTTP/2 connection (codec/http2.py) reports it from ``receive_data``.

Named and shaped as h2's events (h2.events) so that the code written against h2 reads the
same, with two differences: an event carries ``ended`` (the frame had END_STREAM) instead of
h2's separate StreamEnded event, and events nobody here acts on (SettingsAcknowledged,
PingReceived, informational responses, unknown frames) are not made at all.
"""

from __future__ import annotations

from typing import Any


class RequestReceived:
    """A request's header block (server side)."""

    def __init__(self, stream_id: int, headers: list[Any], ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.ended = ended


class ResponseReceived:
    """A response's (final) header block (client side)."""

    def __init__(self, stream_id: int, headers: list[Any], ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.ended = ended


class TrailersReceived:
    """A trailing header block; it always ends the stream."""

    def __init__(self, stream_id: int, headers: list[Any]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class DataReceived:
    """A DATA frame: ``data`` without padding, ``flow_controlled_length`` with it."""

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int,
                 ended: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length
        self.ended = ended


class StreamReset:
    """The stream is gone: the peer reset it (``remote_reset``), or we did on a stream error."""

    def __init__(self, stream_id: int, error_code: int, remote_reset: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote_reset = remote_reset


class WindowUpdated:
    """The peer opened a window: a stream's, or the connection's (``stream_id`` 0)."""

    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged:
    """The peer's SETTINGS (already applied and acknowledged): setting code -> value."""

    def __init__(self, changed: dict[int, int]) -> None:
        self.changed = changed


class PingAckReceived:
    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class PriorityUpdated:
    """A PRIORITY frame (counted against floods; priorities themselves are not used)."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class ConnectionTerminated:
    """The peer's GOAWAY."""

    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes | None) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.additional_data = additional_data
