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
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# By path: importing the sidecar package would run the check this build feeds.
_spec = importlib.util.spec_from_file_location("sidecar_native", os.path.join("sidecar", "native.py"))
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)


class BuildExtWithManifest(build_ext):
    """Record the compiled sources only once their extension modules are built.

    During the build the manifest says "nothing compiled", so a process that
    starts meanwhile runs the sources instead of new sources against old
    extension modules.
    """

    def run(self) -> None:
        native.write_manifest([])
        super().run()
        native.write_manifest(native.HOT_PATH)
        if not self.inplace:        # a wheel: the manifest travels in build_lib
            native.write_manifest(native.HOT_PATH, root=Path(self.build_lib))


def ext_modules() -> list:
    if os.environ.get("SIDECAR_PURE_PYTHON"):
        native.write_manifest([])
        return []
    from mypyc.build import mypycify
    return mypycify([native.module_path(name) for name in native.HOT_PATH], opt_level="3")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExtWithManifest})
