"""A stream server on its own thread and event loop, for scripted test upstreams.

Subclasses implement ``_serve(reader, writer)``; ``with Server() as s`` starts it on
a free port of ``host`` (``s.port``) and stops it (cancelling every handler) on exit.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class ThreadedServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop)
        if self._thread is not None:
            self._thread.join(5)

    def _stop(self) -> None:
        self._server.close()  # type: ignore[union-attr]
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_soon(self._loop.stop)  # type: ignore[union-attr]

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._serve, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(asyncio.sleep(0))   # let cancelled handlers unwind
        loop.close()
