"""The mypyc-compiled hot path: which modules it holds, and whether this process uses it.

setup.py compiles the modules in HOT_PATH with mypyc and records a SHA-256 of
each source in ``sidecar/native_build.json``.  Python imports an extension
module in preference to the ``.py`` beside it, so after an edit the stale
compiled module would silently win; ``activate()`` (run by the ``sidecar`` and
``filters`` packages before anything else of theirs) prevents that: when any
hot-path source no longer matches its digest, or ``SIDECAR_PURE_PYTHON=1`` is
set, a finder placed first on ``sys.meta_path`` loads every hot-path module
from its source.  All or none: compiled modules call each other's C functions
directly, so one module interpreted beside compiled callers would not see the
edit either.

This file is also loaded by path from setup.py, so it imports nothing of the
project.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The h11 adapter is left out on purpose: it is the pure-Python reference codec
# the tests hold the httptools one against, not the hot path.
HOT_PATH = (
    "sidecar.codec.events",
    "sidecar.codec.hpack",
    "sidecar.codec.http2_events",
    "sidecar.codec.http2_frames",
    "sidecar.codec.http1",
    "sidecar.codec.http1_httptools",
    "sidecar.flow_control",
    "sidecar.timers",
    "sidecar.response_counts",
    "sidecar.http.dates",
    "sidecar.http.message",
    "sidecar.http.route_table",
    "sidecar.http.request_headers",
    "sidecar.http.responding",
    "sidecar.http.connection",
    "sidecar.http.h2_guard",
    "sidecar.http.h2_headers",
    "sidecar.codec.http2",
    "sidecar.http.h2_stream",
    "sidecar.http.h2_respond",
    "sidecar.http.h2_intake",
    "sidecar.http.connection_h2",
    "sidecar.upstream.host",
    "sidecar.upstream.lb",
    "sidecar.upstream.hash_lb",
    "sidecar.upstream.priority",
    "sidecar.upstream.cx_destroy",
    "sidecar.upstream.connect_failure",
    "sidecar.upstream.http1",
    "sidecar.upstream.pool",
    "sidecar.upstream.http2_headers",
    "sidecar.upstream.http2_stream",
    "sidecar.upstream.http2",
    "sidecar.upstream.pool_h2",
    "sidecar.upstream.pool_dual",
    "sidecar.upstream.cluster",
    "config.model_core",
    "config.model_routes",
    "config.model_listeners",
    "config.model_clusters",
    "config.model_bootstrap",
    "config.model",
    "filters.http.router.headers",
    "filters.http.router.upstream_request",
    "filters.http.router.exchange",
    "filters.http.router.filter",
)

ROOT = Path(__file__).resolve().parent.parent     # holds sidecar/ and filters/
MANIFEST = ROOT / "sidecar" / "native_build.json"

log = logging.getLogger("sidecar.native")

# What activate() decided: "compiled", or "interpreted (<why>)".
state = "not checked"


def module_path(name: str) -> str:
    """The source file of a dotted module name, relative to ROOT: ``sidecar/timers.py``."""
    return name.replace(".", "/") + ".py"


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(names: Sequence[str], root: Path = ROOT) -> None:
    """Record the digest of each compiled module's source (called by setup.py at build time)."""
    digests = {name: source_digest(root / module_path(name)) for name in names}
    (root / "sidecar" / "native_build.json").write_text(
        json.dumps({"compiled": digests}, indent=1, sort_keys=True) + "\n")


def changed_sources(root: Path = ROOT) -> list[str] | None:
    """Hot-path modules whose source differs from what was compiled; None if nothing was compiled."""
    try:
        digests: dict[str, str] = json.loads((root / "sidecar" / "native_build.json").read_text())["compiled"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not digests:
        return None
    changed = []
    for name in HOT_PATH:
        path = root / module_path(name)
        if digests.get(name) != (source_digest(path) if path.exists() else None):
            changed.append(name)
    return changed


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the hot-path modules as ``.py`` sources, ahead of the compiled extension modules."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in HOT_PATH:
            return None
        return importlib.util.spec_from_file_location(fullname, self.root / module_path(fullname))


def activate() -> str:
    """Decide once per process between the compiled hot path and its sources; returns ``state``."""
    global state
    if state != "not checked":
        return state
    changed = changed_sources()
    # Without a manifest the sources are loaded explicitly too, so that extension
    # modules left over from an earlier compiled build can't shadow them.
    if changed is None:
        state = "interpreted (not compiled: installed with SIDECAR_PURE_PYTHON=1)"
    elif os.environ.get("SIDECAR_PURE_PYTHON"):
        state = "interpreted (SIDECAR_PURE_PYTHON is set)"
    elif changed:
        state = (f"interpreted ({', '.join(changed)} changed since the compiled build; "
                 "run `pip install -e .` again to recompile)")
        log.warning("hot path %s", state)
    else:
        state = "compiled"
        return state
    sys.meta_path.insert(0, _SourceFinder(ROOT))
    return state
