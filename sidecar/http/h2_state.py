"""h2's connection and stream classes as our HTTP/2 connections (downstream and upstream) use them.

Kept out of the compiled hot path (sidecar/native.py): a class compiled with mypyc
cannot subclass an interpreted one such as h2's H2ConnectionStateMachine (compiled, its
state transitions fail inside CPython's dict code).  What they call into is compiled.
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.stream
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import ContinuationFrame, Frame, RstStreamFrame

from sidecar.http.h2_frames import serialize_frames
from sidecar.http.h2_headers import process_outbound_headers, process_received_headers


class ServerStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that the client's GOAWAY does not close it:
    the streams the client opened are still answered (RFC 9113 6.8), and the frames
    that follow the GOAWAY (acks, window updates) are still valid."""

    def process_input(self, input_: Any) -> Any:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY:
            return []
        return super().process_input(input_)


class Connection(h2.connection.H2Connection):
    """h2's H2Connection, with the same behaviour at less cost per frame:

    - its streams process the header blocks they receive in one compiled pass
      (h2_headers.py) instead of h2's chain of generators;
    - the frames it sends are serialized by h2_frames.py instead of hyperframe;
    - a received frame is no longer formatted (``repr``) for a trace log nobody reads.
    """

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if frames:
            self._data_to_send += serialize_frames(frames, self.max_outbound_frame_size)

    def _receive_frame(self, frame: Frame) -> list[Any]:
        # h2's _receive_frame (h2 4.x) without its first line, which formats every frame
        # for config.logger.trace even when the logger drops it (ours does).
        events: list[Any]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # h2 builds its H2Stream itself: re-classing the new instance (no state of its own
        # is added) swaps the one method without copying h2's stream bookkeeping here.
        stream.__class__ = _Stream
        return stream


class _Stream(h2.stream.H2Stream):
    """h2's stream; the header blocks it receives and sends are processed by h2_headers.py."""

    def _build_headers_frames(self, headers: Any, encoder: Any, first_frame: Any,
                              hdr_validation_flags: Any) -> list[Any]:
        # h2's _build_headers_frames (h2 4.x) with its generator chains replaced.
        config = self.config
        headers = process_outbound_headers(
            headers if type(headers) is list else list(headers),
            hdr_validation_flags.is_trailer, hdr_validation_flags.is_response_header,
            config.normalize_outbound_headers, config.split_outbound_cookies,
            config.validate_outbound_headers)
        encoded_headers = encoder.encode(headers)
        size = self.max_outbound_frame_size or 0
        header_blocks = [encoded_headers[i:i + size] for i in range(0, len(encoded_headers), size)]
        frames: list[Any] = []
        first_frame.data = header_blocks[0]
        frames.append(first_frame)
        for block in header_blocks[1:]:
            cf = ContinuationFrame(self.stream_id)
            cf.data = block
            frames.append(cf)
        frames[-1].flags.add("END_HEADERS")
        return frames

    def _process_received_headers(self, headers: Any, hdr_validation_flags: Any,
                                  header_encoding: Any) -> list[Any]:
        config = self.config
        return process_received_headers(
            headers if type(headers) is list else list(headers),
            hdr_validation_flags.is_trailer, hdr_validation_flags.is_response_header,
            config.normalize_inbound_headers, config.validate_inbound_headers,
            header_encoding if isinstance(header_encoding, str) else None)
