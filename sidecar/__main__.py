"""The ``sidecar`` command: Envoy's command line (-c, --config-yaml, --mode, -l, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from config.bootstrap import load_bootstrap
from config.errors import ConfigError, ConfigErrors

log = logging.getLogger("sidecar")

LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
              "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sidecar", description="A sidecar proxy that runs Envoy v3 configs.",
        epilog="Also: `sidecar bootstrap` (a bootstrap from environment variables, --help for "
               "them) and `sidecar xds-server` (the development control plane).")
    p.add_argument("-c", "--config-path", help="Envoy v3 bootstrap file (YAML or JSON)")
    p.add_argument("--config-yaml", help="YAML bootstrap merged over the file (as Envoy merges it)")
    p.add_argument("--mode", choices=("serve", "validate"), default="serve")
    p.add_argument("-l", "--log-level", choices=sorted(LOG_LEVELS), default="info")
    p.add_argument("--service-node", default="", help="node.id (overrides the bootstrap)")
    p.add_argument("--service-cluster", default="", help="node.cluster (overrides the bootstrap)")
    p.add_argument("--service-zone", default="", help="node.locality.zone (overrides the bootstrap)")
    p.add_argument("--drain-time-s", type=int, default=600,
                   help="how long in-flight requests may take to finish on shutdown")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--base-id", type=int, default=0, help="accepted for Envoy compatibility; unused")
    p.add_argument("--file-flush-interval-msec", type=int, default=10000,
                   help="how often access log files are written (as Envoy's)")
    p.add_argument("--http1-codec", choices=("httptools", "h11"),
                   default=os.environ.get("SIDECAR_HTTP1_CODEC", "httptools"),
                   help="HTTP/1 parser: httptools (llhttp, fast) or h11 (pure-Python reference)")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Bootstrap protobuf and translated snapshot; raises ConfigError(s)."""
    from config.translate import translate_bootstrap
    from filters.registry import http_filter_parser

    bootstrap = load_bootstrap(args.config_path, args.config_yaml)
    # Envoy's --service-* flags override the bootstrap's node.
    if args.service_node:
        bootstrap.node.id = args.service_node
    if args.service_cluster:
        bootstrap.node.cluster = args.service_cluster
    if args.service_zone:
        bootstrap.node.locality.zone = args.service_zone
    snapshot, warnings = translate_bootstrap(bootstrap, http_filter_parser)
    for w in warnings:
        log.warning("%s", w)
    return bootstrap, snapshot


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["xds-server"]:      # the development control plane (sidecar/xds_server)
        from sidecar.xds_server.cli import main as xds_server_main
        return xds_server_main(argv[1:])
    if argv[:1] == ["bootstrap"]:       # bootstrap from the environment (sidecar/bootstrap_gen)
        from sidecar.bootstrap_gen import main as bootstrap_main
        return bootstrap_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=LOG_LEVELS[args.log_level],
                        format="[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s")
    if args.concurrency != 1:
        print(f"sidecar: --concurrency {args.concurrency} is not supported yet: sidecar runs one "
              "event loop (one worker); use --concurrency 1", file=sys.stderr)
        return 1
    try:
        bootstrap, snapshot = load(args)
    except ConfigErrors as e:
        for err in e.errors:
            print(f"error: {err}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.mode == "validate":
        print(f"configuration '{args.config_path or '--config-yaml'}' OK")
        return 0
    options = {"config_path": args.config_path or "", "config_yaml": args.config_yaml or "",
               "concurrency": args.concurrency, "log_level": args.log_level,
               "service_node": args.service_node, "service_cluster": args.service_cluster,
               "service_zone": args.service_zone, "drain_time_s": args.drain_time_s,
               "mode": "Serve", "base_id": args.base_id, "http1_codec": args.http1_codec,
               "file_flush_interval_msec": args.file_flush_interval_msec}
    return run_server(bootstrap, snapshot, options)


def run_server(bootstrap: Any, snapshot: Any, options: dict[str, Any]) -> int:
    import uvloop

    from sidecar.server import Server

    async def serve() -> int:
        server = Server(bootstrap, snapshot, options)
        try:
            await server.serve()
        except OSError as e:
            log.critical("cannot start: %s", e)
            return 1
        return 0

    return uvloop.run(serve())


if __name__ == "__main__":
    sys.exit(main())
