"""``sidecar xds-server``: flags, logging setup, the initial load, then serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from config.errors import ConfigErrors

log = logging.getLogger("sidecar.xds_server")

LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
              "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sidecar xds-server",
        description="A development xDS control plane: serves Listener, RouteConfiguration, Cluster and "
                    "ClusterLoadAssignment resources from YAML files over ADS (SotW and Delta), "
                    "and pushes every change it sees in the files.")
    p.add_argument("--config", required=True, metavar="PATH",
                   help="a YAML/JSON file, or a folder whose *.yaml, *.yml and *.json files are merged")
    p.add_argument("--port", type=int, default=18000, help="gRPC port (0 picks a free one; default 18000)")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-l", "--log-level", choices=sorted(LOG_LEVELS), default="info")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=LOG_LEVELS[args.log_level], stream=sys.stderr,
                        format="[%(asctime)s][%(levelname)s][%(name)s] %(message)s")
    # Imported after the argument check so --help stays fast (these pull in Envoy's API modules).
    from sidecar.xds_server.resources import load_resources
    from sidecar.xds_server.server import serve
    from sidecar.xds_server.store import ResourceStore

    path = Path(args.config)
    try:
        resources = load_resources(path)
    except ConfigErrors as e:
        for err in e.errors:
            print(f"error: {err}", file=sys.stderr)
        return 1
    log.info("loaded %s (%s)", path, resources.summary())
    try:
        return asyncio.run(serve(ResourceStore(path, resources), args.address, args.port))
    except KeyboardInterrupt:       # Ctrl-C before the signal handlers were installed
        return 0
