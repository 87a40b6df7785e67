"""Running iptables-restore / iptables-save (and the ip6tables twins); backend choice; IPv6 detection.

By default the binaries are the system's: on Debian ``iptables-restore`` is iptables-nft
(nf_tables kernel API, legacy syntax), which is what the rules are tested with; a namespace that
already holds iptables-legacy rules gets ours through legacy too (``resolve``). Everything runs in
the caller's network namespace (a container sharing the app's network, or ``ip netns exec``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass

from sidecar.proxy_init.rules import Family

log = logging.getLogger("proxy_init")

_TIMEOUT_S = 30.0


class IptablesError(RuntimeError):
    """An iptables command failed or is missing; the message says which and why."""


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise IptablesError(f"{name} not found on PATH (install the iptables package; proxy-init "
                            "needs iptables-restore / iptables-save, and their ip6tables twins "
                            "for IPv6)")
    return path


@dataclass(frozen=True)
class Tables:
    """One family's tables through one iptables backend: "" is the system's default
    (``iptables-restore``, the Debian alternative), "nft" / "legacy" the explicit binaries
    (``iptables-nft-restore``, ``iptables-legacy-restore``)."""

    family: Family
    backend: str = ""

    @property
    def name(self) -> str:
        return self.family.tool + (f"-{self.backend}" if self.backend else "")

    def available(self) -> bool:
        return all(shutil.which(f"{self.name}-{kind}") for kind in ("restore", "save"))

    def restore(self, text: str) -> None:
        """Apply ``text`` in one transaction; ``--noflush`` keeps every rule we do not name."""
        cmd = [_binary(f"{self.name}-restore"), "--noflush"]
        proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=_TIMEOUT_S)
        if proc.returncode != 0:
            raise IptablesError(f"{self.name}-restore --noflush failed (exit {proc.returncode}): "
                                f"{proc.stderr.strip() or proc.stdout.strip()}\ninput was:\n{text}")

    def save(self, table: str | None = None) -> str:
        """``iptables-save [-t table]`` ("" when the table does not exist in this namespace)."""
        cmd = [_binary(f"{self.name}-save")] + (["-t", table] if table else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
        if proc.returncode != 0:
            # A table whose kernel module is absent cannot hold our chains: nothing to clean.
            log.debug("%s-save -t %s failed: %s", self.name, table, proc.stderr.strip())
            return ""
        return proc.stdout

    def has_rules(self) -> bool:
        return any(line.startswith("-A ") for line in self.save().splitlines())


def resolve(family: Family, backend: str) -> Tables:
    """The backend to install with. "auto" is istio-iptables' detection: the backend that
    already holds rules in this namespace (e.g. Docker's embedded-DNS nat rules, written by the
    host's iptables), legacy first, else nft, else the system default. Rules of both backends
    in one namespace would both run, in an order nobody chose."""
    if backend != "auto":
        return Tables(family, backend)
    for candidate in ("legacy", "nft"):
        tables = Tables(family, candidate)
        if tables.available() and tables.has_rules():
            return tables
    return Tables(family)


def cleanup_targets(family: Family, backend: str) -> list[Tables]:
    """Where --cleanup looks: the named backend, or (auto) every installed one."""
    if backend != "auto":
        return [Tables(family, backend)]
    found = [Tables(family, c) for c in ("legacy", "nft") if Tables(family, c).available()]
    return found or [Tables(family)]


def has_routable_ipv6(if_inet6: str = "/proc/net/if_inet6") -> bool:
    """True when an interface other than lo has an IPv6 address that is not link-local.

    /proc/net/if_inet6 rows: address, ifindex, prefix length, scope, flags, name. Scope 0x20 is
    link-local and 0x10 host (loopback)."""
    try:
        with open(if_inet6, encoding="ascii") as f:
            rows = [line.split() for line in f]
    except OSError:
        return False                    # IPv6 disabled in this kernel / namespace
    return any(len(row) >= 6 and row[5] != "lo" and int(row[3], 16) not in (0x10, 0x20)
               for row in rows)


def add_ipv6_passthrough_address() -> None:
    """``ip -6 addr add ::6/128 dev lo``, as istio-iptables does: IPv6 lo has only ::1, and the
    sidecar's inbound passthrough binds ::6 as its source (the rules let ::6 through)."""
    ip = shutil.which("ip")
    if ip is None:
        log.warning("ip (iproute2) not found: ::6 not added to lo; IPv6 inbound passthrough "
                    "connections from ::6 will fail to bind")
        return
    proc = subprocess.run([ip, "-6", "addr", "add", "::6/128", "dev", "lo"], capture_output=True,
                          text=True, timeout=_TIMEOUT_S)
    # Re-runs find it there: "File exists" (older iproute2) / "address already assigned".
    if proc.returncode != 0 and not any(text in proc.stderr.lower()
                                        for text in ("exists", "already assigned")):
        raise IptablesError(f"ip -6 addr add ::6/128 dev lo failed: {proc.stderr.strip()}")
