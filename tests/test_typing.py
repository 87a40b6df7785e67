"""The packages stay mypy-clean (DESIGN.md convention 1): mypy runs here as CI runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.proxy import REPO


def test_packages_are_mypy_clean():
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
