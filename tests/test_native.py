"""The compiled hot path (sidecar/native.py): used when it matches its sources, never when stale.

Each check runs a fresh interpreter, since the choice is made once per process.
The copies below are whole trees (sources, manifest, extension modules) in a
temporary directory, so editing one never touches the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import native

REPO = Path(__file__).resolve().parent.parent
REPORT = ("import sys, json, importlib; import sidecar.native as n, sidecar, filters; "
          "files = {m: importlib.import_module(m).__file__ for m in n.HOT_PATH}; "
          "print(json.dumps({'state': n.state, 'files': files}))")

compiled_build = pytest.mark.skipif(
    native.changed_sources() is None,
    reason="this checkout was installed with SIDECAR_PURE_PYTHON=1: no compiled hot path to check")


def report(root: Path, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k != "SIDECAR_PURE_PYTHON"}
    environment.update(env, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", REPORT], cwd=root, env=environment,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def copy_build(dest: Path) -> Path:
    for package in ("sidecar", "filters", "config"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    for shared_lib in REPO.glob("*__mypyc*.so"):     # mypyc's runtime for all compiled modules
        shutil.copy2(shared_lib, dest)
    return dest


@compiled_build
def test_this_checkout_runs_the_compiled_hot_path() -> None:
    result = report(REPO)
    assert result["state"] == "compiled"
    assert all(f.endswith(".so") for f in result["files"].values()), result["files"]


@compiled_build
def test_one_edited_source_makes_the_whole_hot_path_run_from_sources(tmp_path: Path) -> None:
    root = copy_build(tmp_path)
    assert report(root)["state"] == "compiled"
    timers = root / "sidecar" / "timers.py"
    timers.write_text(timers.read_text() + "\nEDITED = True\n")
    result = report(root)
    assert result["state"].startswith("interpreted (sidecar.timers changed since the compiled build")
    assert all(f.endswith(".py") for f in result["files"].values()), result["files"]


@compiled_build
def test_pure_python_switch_and_missing_manifest_load_sources(tmp_path: Path) -> None:
    root = copy_build(tmp_path)
    assert report(root, SIDECAR_PURE_PYTHON="1")["state"] == "interpreted (SIDECAR_PURE_PYTHON is set)"
    (root / "sidecar" / "native_build.json").write_text(json.dumps({"compiled": {}}))
    result = report(root)
    assert result["state"].startswith("interpreted (not compiled")
    assert all(f.endswith(".py") for f in result["files"].values()), result["files"]
