"""The README's xDS walk-through, as written: examples/xds served by `sidecar xds-server`,
`sidecar -c examples/xds/bootstrap.yaml` routing by it, an edit going live.
Only the fixed ports are swapped for free ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.support.proxy import REPO, ProxyProcess, free_port
from tests.xds_server.support import XdsServer, wait_for_body

EXAMPLE = REPO / "examples" / "xds"


def test_the_xds_example_runs_and_follows_an_edit(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(EXAMPLE / "config", folder)
    port, xds_port = free_port(), free_port()
    listeners = folder / "listeners.yaml"
    listeners.write_text(listeners.read_text().replace("port_value: 10010", f"port_value: {port}"))
    bootstrap = yaml.safe_load((EXAMPLE / "bootstrap.yaml").read_text())
    xds = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    xds["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = xds_port
    with XdsServer(folder, "--port", str(xds_port)), ProxyProcess(bootstrap):
        wait_for_body(port, "/", "hello from a route the control plane pushed\n")
        routes = folder / "routes.yaml"
        edited = folder / ".routes.yaml.tmp"
        edited.write_text(routes.read_text().replace("hello from a route", "an edited route"))
        edited.replace(routes)
        wait_for_body(port, "/", "an edited route the control plane pushed\n", timeout=5)
