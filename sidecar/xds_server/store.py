"""The live resource set and the streams watching it: reload keeps the last good set on error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from config.errors import ConfigErrors
from sidecar.xds_server.resources import ResourceSet, diff, load_resources

log = logging.getLogger("sidecar.xds_server")

Listener = Callable[[ResourceSet], None]


class ResourceStore:
    """Holds the current ResourceSet; tells every registered stream when it is replaced."""

    def __init__(self, path: Path, initial: ResourceSet) -> None:
        self.path = path
        self.current = initial
        self._listeners: list[Listener] = []

    def watch(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(new_set)`` on every change; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def reload(self) -> bool:
        """Re-read the files.  True if the set changed; on errors the old set stays and is served."""
        try:
            new = load_resources(self.path)
        except ConfigErrors as e:
            log.error("reload of %s failed, still serving the last good config:\n  %s",
                      self.path, "\n  ".join(str(err) for err in e.errors))
            return False
        return self.replace(new)

    def replace(self, new: ResourceSet) -> bool:
        changes = diff(self.current, new)
        if not changes:
            log.debug("reload of %s: no resource changed", self.path)
            return False
        self.current = new
        log.info("reloaded %s (%s): %s", self.path, new.summary(),
                 "; ".join(c.describe() for c in changes))
        for listener in list(self._listeners):
            listener(new)
        return True
