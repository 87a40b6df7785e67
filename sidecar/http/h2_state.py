"""h2's connection state machine as the HTTP/2 connection manager needs it.

Kept out of the compiled hot path (sidecar/native.py): a class compiled with mypyc
cannot subclass an interpreted one such as h2's H2ConnectionStateMachine (compiled, its
state transitions fail inside CPython's dict code).
"""

from __future__ import annotations

from typing import Any

import h2.connection


class ServerStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that the client's GOAWAY does not close it:
    the streams the client opened are still answered (RFC 9113 6.8), and the frames
    that follow the GOAWAY (acks, window updates) are still valid."""

    def process_input(self, input_: Any) -> Any:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY:
            return []
        return super().process_input(input_)
