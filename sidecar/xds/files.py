"""path_config_source: LDS or CDS from a file holding a DiscoveryResponse, reloaded when it changes.

As Envoy: the file is YAML or JSON of an envoy.service.discovery.v3.DiscoveryResponse
(``version_info`` and ``resources``, each with its ``@type``) and is a complete
set, so a resource left out is removed.  Envoy watches for the file being moved
into place (write elsewhere, then ``mv``); we poll its identity (inode, size,
mtime) twice a second, which sees both that and in-place writes.  A file that
does not parse or whose resources are rejected is logged and the last good
config stays (there is no server to NACK to).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from config.bootstrap import parse_message, read_config_file
from config.errors import ConfigError, ConfigErrors
from sidecar.xds.client import Background, Handler, resource_name

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class FileSubscription(Background):
    def __init__(self, type_url: str, path: str, handler: Handler) -> None:
        self.type_url = type_url
        self.path = path
        self.handler = handler
        self.known: set[str] = set()
        self.version = ""
        self._seen: tuple[int, int, int] | None = None

    def subscribe(self, type_url: str, names: set[str] | None) -> None:
        """Files hold complete sets: nothing to ask for."""

    def __repr__(self) -> str:
        return self.path

    async def run(self) -> None:
        while True:
            try:
                st = os.stat(self.path)
                identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError as e:
                identity = None
                if self._seen is not None or not self.known:
                    log.warning("%s: cannot read %s: %s", _kind(self.type_url), self.path, e.strerror)
            if identity is not None and identity != self._seen:
                self._seen = identity
                await self.load()
            await asyncio.sleep(POLL_SECONDS)

    async def load(self) -> bool:
        """Read and apply the file; False (logged) when it is rejected."""
        try:
            response = parse_message(read_config_file(self.path), discovery_pb2.DiscoveryResponse)
            updated: dict[str, tuple[str, Any]] = {}
            for i, resource in enumerate(response.resources):      # type: ignore[attr-defined]
                if resource.type_url != self.type_url:
                    raise ConfigError(f"resources[{i}]", f"expected {self.type_url}, got {resource.type_url}")
                name = resource_name(resource)
                if name in updated:
                    raise ConfigError(f"resources[{i}]", f"duplicate name {name!r}")
                updated[name] = (response.version_info, resource)  # type: ignore[attr-defined]
            removed = self.known - set(updated)
            error = await self.handler.apply(self.type_url, updated, removed)
        except (ConfigError, ConfigErrors, ValueError, OSError) as e:
            error = str(e)
        if error is not None:
            log.error("%s from %s rejected, keeping the last good config: %s",
                      _kind(self.type_url), self.path, error)
            return False
        self.known = set(updated)
        self.version = response.version_info                        # type: ignore[attr-defined]
        log.info("%s from %s: version %s (%d resources)", _kind(self.type_url), self.path,
                 self.version, len(updated))
        return True


def _kind(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
