"""h2's connection and stream classes as our HTTP/2 connections (downstream and upstream) use them.

Kept out of the compiled hot path (sidecar/native.py): a class compiled with mypyc
cannot subclass an interpreted one such as h2's H2ConnectionStateMachine (compiled, its
state transitions fail inside CPython's dict code).  What they call into is compiled.
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.stream

from sidecar.http.h2_headers import process_received_headers


class ServerStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that the client's GOAWAY does not close it:
    the streams the client opened are still answered (RFC 9113 6.8), and the frames
    that follow the GOAWAY (acks, window updates) are still valid."""

    def process_input(self, input_: Any) -> Any:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY:
            return []
        return super().process_input(input_)


class Connection(h2.connection.H2Connection):
    """h2's H2Connection whose streams process the header blocks they receive in one compiled
    pass (h2_headers.py) instead of h2's generator chain: the same result, a tenth of the cost."""

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # h2 builds its H2Stream itself: re-classing the new instance (no state of its own
        # is added) swaps the one method without copying h2's stream bookkeeping here.
        stream.__class__ = _Stream
        return stream


class _Stream(h2.stream.H2Stream):
    def _process_received_headers(self, headers: Any, hdr_validation_flags: Any,
                                  header_encoding: Any) -> list[Any]:
        config = self.config
        return process_received_headers(
            headers if type(headers) is list else list(headers),
            hdr_validation_flags.is_trailer, hdr_validation_flags.is_response_header,
            config.normalize_inbound_headers, config.validate_inbound_headers,
            header_encoding if isinstance(header_encoding, str) else None)
