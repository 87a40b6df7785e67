"""LazyDeadline: a timeout that moves on every request but costs a timer only when it fires.

Creating and cancelling an asyncio TimerHandle per request costs more than the
rest of a counter-sized feature.  A LazyDeadline keeps one handle armed; moving
the deadline later is an attribute store, and when the handle fires early it
re-arms for the current deadline.  Only a deadline *sooner* than the armed one
re-arms at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyDeadline:
    __slots__ = ("loop", "callback", "deadline", "handle", "armed_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback          # called once when a deadline passes
        self.deadline: float | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = 0.0

    def set(self, deadline: float) -> None:
        """Fire ``callback`` at ``deadline`` (loop time) unless moved or cleared first."""
        self.deadline = deadline
        if self.handle is None or deadline < self.armed_at:
            if self.handle is not None:
                self.handle.cancel()
            self.armed_at = deadline
            self.handle = self.loop.call_at(deadline, self._fire)

    def clear(self) -> None:
        """No deadline for now; the armed handle, if any, will fire and do nothing."""
        self.deadline = None

    def cancel(self) -> None:
        """Stop for good (the owner is closing)."""
        self.deadline = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.handle = None
        deadline = self.deadline
        if deadline is None:
            return
        if self.loop.time() >= deadline:
            self.deadline = None
            self.callback()
        else:
            self.armed_at = deadline
            self.handle = self.loop.call_at(deadline, self._fire)
