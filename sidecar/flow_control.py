"""Write-side flow control for asyncio protocols: pause_writing/resume_writing and a wait on them.

The transport calls pause_writing() when its buffer passes the high watermark;
a producer then awaits ``wait_writable()`` before writing more, which returns
on resume_writing() or when the connection is lost (``release_writers()``).
"""

from __future__ import annotations

import asyncio


class WriteFlowControl:
    # Subclasses set both attributes in __init__ (and list them in __slots__ if slotted);
    # the empty __slots__ keeps slotted subclasses free of a __dict__.
    __slots__ = ()
    write_paused: bool
    drain_waiter: asyncio.Future[None] | None

    def pause_writing(self) -> None:
        self.write_paused = True  # type: ignore[misc]

    def resume_writing(self) -> None:
        self.write_paused = False  # type: ignore[misc]
        self.release_writers()

    async def wait_writable(self) -> None:
        """Wait while the transport's write buffer is above its high watermark."""
        if self.write_paused:
            self.drain_waiter = asyncio.get_running_loop().create_future()  # type: ignore[misc]
            await self.drain_waiter

    def release_writers(self) -> None:
        """Wake a producer waiting in wait_writable() (resumed, or the connection is gone)."""
        waiter, self.drain_waiter = self.drain_waiter, None  # type: ignore[misc]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
