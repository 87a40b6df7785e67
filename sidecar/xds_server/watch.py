"""Polls the config path and reloads the store when a file is added, removed or rewritten.

Polling (stat only, a few times a second) instead of inotify: no new dependency,
and it sees editors' write-to-temp-then-rename saves the same way as in-place writes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sidecar.xds_server.resources import config_files
from sidecar.xds_server.store import ResourceStore

log = logging.getLogger("sidecar.xds_server")

POLL_INTERVAL_S = 0.25

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """(name, mtime_ns, size, inode) of every config file; any edit or rename changes it."""
    out = []
    try:
        files = config_files(path) if path.exists() else []
    except OSError:
        files = []
    for file in files:
        try:
            st = file.stat()
        except OSError:         # deleted between listing and stat: the next poll sees it gone
            continue
        out.append((file.name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


async def watch_config(store: ResourceStore, interval: float = POLL_INTERVAL_S) -> None:
    """Run until cancelled: reload whenever the fingerprint moves."""
    seen = fingerprint(store.path)
    while True:
        await asyncio.sleep(interval)
        now = fingerprint(store.path)
        if now == seen:
            continue
        # Remember the fingerprint before reading, so a write that lands while we
        # parse changes it again and is picked up on the next poll.
        seen = now
        log.debug("change under %s, reloading", store.path)
        try:
            store.reload()
        except Exception:
            # A bug in a reload must not take the server (and every client's config) down.
            log.exception("reload of %s crashed; still serving the last good config", store.path)
