"""Build step: compile the per-request hot path with mypyc.

Everything else about the package is in pyproject.toml.  The modules in
sidecar/native.py's HOT_PATH are what every proxied request runs through
(codec, connection manager, router, upstream connection and pool); mypyc
turns their type annotations into C, about half the instructions per request
of the interpreted code (benchmarks/RESULTS.md).  The sources stay the truth:
sidecar/native.py loads them instead of the compiled modules whenever one of
them changed after the build, or when SIDECAR_PURE_PYTHON=1.

SIDECAR_PURE_PYTHON=1 at install time skips compilation (no C compiler
needed; the proxy then runs interpreted, slower).
"""

import importlib.util
import os

from setuptools import setup

# By path: importing the sidecar package would run the check this build feeds.
_spec = importlib.util.spec_from_file_location("sidecar_native", os.path.join("sidecar", "native.py"))
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)


def ext_modules() -> list:
    if os.environ.get("SIDECAR_PURE_PYTHON"):
        native.write_manifest([])
        return []
    from mypyc.build import mypycify
    native.write_manifest(native.HOT_PATH)
    return mypycify([native.module_path(name) for name in native.HOT_PATH], opt_level="3")


setup(ext_modules=ext_modules())
