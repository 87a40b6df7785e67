"""sidecar.http.h2_frames against hyperframe's own serialization, and h2_state's copy of
h2's _receive_frame against the h2 installed."""

from __future__ import annotations

import inspect
import random
import re

import h2.connection
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from sidecar.http import h2_state
from sidecar.http.h2_frames import serialize_frames


def frames_of_every_kind(rnd: random.Random) -> list:
    out: list = []
    for _ in range(rnd.randint(1, 6)):
        sid = rnd.choice([1, 3, 0x7FFFFFFF, 2 ** 31 + 5])
        kind = rnd.randrange(9)
        if kind == 0:
            f = DataFrame(sid, data=rnd.randbytes(rnd.randrange(40)))
            if rnd.random() < 0.5:
                f.flags.add("END_STREAM")
        elif kind == 1:
            f = DataFrame(sid, data=memoryview(rnd.randbytes(30))[3:20])
        elif kind == 2:
            f = HeadersFrame(sid, data=rnd.randbytes(rnd.randrange(40)))
            for flag in ("END_STREAM", "END_HEADERS"):
                if rnd.random() < 0.5:
                    f.flags.add(flag)
        elif kind == 3:      # padded and prioritized: hyperframe's layout
            f = HeadersFrame(sid, data=b"abc", pad_length=3, depends_on=1, stream_weight=7)
            for flag in ("PADDED", "PRIORITY", "END_HEADERS"):
                f.flags.add(flag)
        elif kind == 4:
            f = ContinuationFrame(sid, data=rnd.randbytes(10))
            f.flags.add("END_HEADERS")
        elif kind == 5:
            f = WindowUpdateFrame(sid % 2 ** 31, window_increment=rnd.randrange(1, 2 ** 31))
        elif kind == 6:
            f = RstStreamFrame(sid % 2 ** 31, error_code=rnd.choice([0, 8, 0xFFFFFFFF]))
        elif kind == 7:
            f = PingFrame(0, opaque_data=b"12345678")
            f.flags.add("ACK")
        else:
            f = rnd.choice([SettingsFrame(0, settings={4: 65535}), GoAwayFrame(0, error_code=1)])
        out.append(f)
    return out


def test_same_bytes_as_hyperframe() -> None:
    rnd = random.Random(3)
    for _ in range(500):
        frames = frames_of_every_kind(rnd)
        ours = serialize_frames(frames, 2 ** 24 - 1)
        assert ours == b"".join(f.serialize() for f in frames)


@pytest.mark.parametrize("frame", [DataFrame(1, data=b"x" * 101), HeadersFrame(1, data=b"x" * 101),
                                   SettingsFrame(0, settings={1: 1, 2: 0, 3: 1, 4: 1, 5: 2 ** 14,
                                                              6: 1, 8: 0, 9: 1, 10: 1})],
                         ids=["data", "headers", "settings"])
def test_a_frame_over_the_peers_size_is_refused_as_h2_does(frame) -> None:
    with pytest.raises(AssertionError):
        serialize_frames([frame], 50)
    assert serialize_frames([frame], 200) == frame.serialize()


def _code_lines(func: object) -> list[str]:
    lines = []
    for line in inspect.getsource(func).splitlines():      # type: ignore[arg-type]
        line = re.sub(r"#.*", "", line).strip()
        if line and not line.startswith(("def ", "events:", '"""', ".. ", "Handle a frame",
                                         "Removed from")):
            lines.append(line)
    return lines


def test_receive_frame_is_h2s_without_the_trace_line() -> None:
    """h2_state.Connection._receive_frame copies h2's: this fails when an h2 upgrade changes it."""
    theirs = [line for line in _code_lines(h2.connection.H2Connection._receive_frame)
              if not line.startswith("self.config.logger.trace(")]
    assert _code_lines(h2_state.Connection._receive_frame) == theirs
