"""Network-namespace test harness: an "app" and a "remote" namespace joined by a veth pair.

    reason = netns_skip_reason()          # None when the harness can run (root, ip, iptables)
    with NetnsPair() as net:              # distinct names per run; always torn down
        net.app.run(["iptables-save"])    # a command inside a namespace
        srv = net.remote.spawn([...])     # a long-running process (killed at teardown)
        net.app.run([...], user=1337)     # run as UID (and GID) 1337 via setpriv
    python_for_uid(1337)                  # an interpreter that UID can run (None: skip)

Addressing (both families on the one veth):
    app     10.77.0.1/24   fd77::1/64     interface ``net.app_if``
    remote  10.77.0.2/24   fd77::2/64     interface ``net.remote_if``

Fresh veths would stall the first connection: IPv6 addresses go through duplicate address
detection (so they are added ``nodad``) and the first packet waits for ARP / neighbour
discovery (so both sides get permanent neighbour entries for the other's MAC).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import IO, Sequence

APP_V4, REMOTE_V4 = "10.77.0.1", "10.77.0.2"
APP_V6, REMOTE_V6 = "fd77::1", "fd77::2"
_APP_MAC, _REMOTE_MAC = "02:77:00:00:00:01", "02:77:00:00:00:02"


def netns_skip_reason() -> str | None:
    """Why namespace tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns, iptables)"
    for tool in ("ip", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save",
                 "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iptables iproute2 util-linux)"
    probe = f"sc-probe-{secrets.token_hex(3)}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    try:
        ipt = subprocess.run(["ip", "netns", "exec", probe, "iptables-save", "-t", "nat"],
                             capture_output=True, text=True)
        if ipt.returncode != 0:
            return f"iptables does not work in a network namespace: {ipt.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@functools.lru_cache(maxsize=None)
def python_for_uid(uid: int) -> str | None:
    """A Python interpreter ``uid`` may execute (stdlib only), or None: the venv may live where
    only root can read (e.g. under /root). Run scripts from their source text (``-c``) for the
    same reason."""
    for candidate in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"):
        proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               candidate, "-I", "-S", "-c", "pass"], capture_output=True, timeout=10)
        if proc.returncode == 0:
            return candidate
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Netns:
    """One network namespace; processes started in it are killed at teardown."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[str]] = []

    def argv(self, argv: Sequence[str], user: int | None = None, group: int | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if user is not None or group is not None:
            # setpriv really switches UID/GID, so iptables' owner match sees them.
            prefix += ["setpriv", f"--reuid={user if user is not None else 0}",
                       f"--regid={group if group is not None else (user or 0)}", "--clear-groups"]
        return prefix + list(argv)

    def run(self, argv: Sequence[str], *, user: int | None = None, group: int | None = None,
            input: str | None = None, check: bool = True, timeout: float = 20.0,
            env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(argv, user, group), input=input, capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=cwd)
        if check and proc.returncode != 0:
            raise AssertionError(f"in {self.name}: {' '.join(argv)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def spawn(self, argv: Sequence[str], *, user: int | None = None, group: int | None = None,
              ready_line: str | None = None, timeout: float = 10.0,
              env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen[str]:
        """Start a long-running process; with ready_line, wait until it prints that line."""
        proc = subprocess.Popen(self.argv(argv, user, group), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env=env, cwd=cwd)
        self.procs.append(proc)
        if ready_line is not None:
            assert proc.stdout is not None
            deadline = time.monotonic() + timeout
            line = ""
            while time.monotonic() < deadline:
                line = _readline(proc.stdout, deadline - time.monotonic())
                if line.strip() == ready_line or not line:
                    break
            if line.strip() != ready_line:
                self.stop(proc)
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"in {self.name}: {' '.join(argv)} never printed "
                                     f"{ready_line!r}: {err}")
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)     # its own session: the child, not us
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs.pop())


def _readline(stream: IO[str], timeout: float) -> str:
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(max(timeout, 0.0)):
            return ""
    finally:
        sel.close()
    return stream.readline()


class NetnsPair:
    """``app`` and ``remote`` namespaces with a veth between them (IPv4 + IPv6)."""

    def __init__(self, prefix: str = "sc") -> None:
        tag = secrets.token_hex(3)
        self.app = Netns(f"{prefix}-{tag}-app")
        self.remote = Netns(f"{prefix}-{tag}-remote")
        self.app_if = f"va{tag}"            # interface names: at most 15 characters
        self.remote_if = f"vr{tag}"
        self.app_v4, self.remote_v4 = APP_V4, REMOTE_V4
        self.app_v6, self.remote_v6 = APP_V6, REMOTE_V6

    def __enter__(self) -> NetnsPair:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        a, r = self.app.name, self.remote.name
        _ip("netns", "add", a)
        _ip("netns", "add", r)
        _ip("link", "add", self.app_if, "netns", a, "address", _APP_MAC, "type", "veth",
            "peer", "name", self.remote_if, "netns", r, "address", _REMOTE_MAC)
        for ns, nic, v4, v6, peer_v4, peer_v6, peer_mac in (
                (a, self.app_if, APP_V4, APP_V6, REMOTE_V4, REMOTE_V6, _REMOTE_MAC),
                (r, self.remote_if, REMOTE_V4, REMOTE_V6, APP_V4, APP_V6, _APP_MAC)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", nic)
            _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", nic, "nodad")
            _ip("-n", ns, "link", "set", nic, "up")
            _ip("-n", ns, "neigh", "replace", peer_v4, "lladdr", peer_mac, "dev", nic,
                "nud", "permanent")
            _ip("-n", ns, "-6", "neigh", "replace", peer_v6, "lladdr", peer_mac, "dev", nic,
                "nud", "permanent")

    def close(self) -> None:
        for ns in (self.app, self.remote):
            ns.stop_all()
            # Deleting the namespace deletes its end of the veth, and with it the peer.
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
