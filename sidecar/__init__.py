"""The runtime: CLI, server lifecycle, codecs, connection manager, listeners, upstreams, admin, stats."""

from sidecar import native

native.activate()   # before any hot-path module is imported: compiled build or its sources
