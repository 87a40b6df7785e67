"""Half-closing a uvloop transport without ``write_eof()``.

uvloop 0.23.0 aborts ("double free or corruption") when a transport that
called ``write_eof()`` is closed while libuv's shutdown request is still
pending: the request lives inside the transport object that ``close()`` frees.
So we wait until the transport's write buffer is empty, then ``shutdown(SHUT_WR)``
the socket through a dup of its descriptor; uvloop never issues a shutdown
request of its own.  tests/integration/test_churn.py exercises this path.
"""

from __future__ import annotations

import asyncio
import os
import socket


def shutdown_write(transport: asyncio.Transport) -> bool:
    """Send FIN now if nothing is left to write; False if the buffer is not empty yet."""
    if transport.is_closing():
        return True
    if transport.get_write_buffer_size():
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    try:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return True
    try:
        dup.shutdown(socket.SHUT_WR)
    except OSError:
        pass   # the peer is already gone; the transport will learn it on its next read
    finally:
        dup.close()
    return True
