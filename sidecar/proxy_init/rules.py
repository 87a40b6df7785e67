"""CaptureConfig -> iptables-restore input: Istio's chains, in Istio's rule order, per IP family.

Mirrors istio-iptables' capture/run.go (REDIRECT mode), whose output is pinned by Istio's golden
files (tools/istio-iptables/pkg/capture/testdata/*.golden; tests/proxy_init/test_rules.py
compares against them):

  nat PREROUTING  -> ISTIO_INBOUND      inbound TCP: tunnel port / excluded ports RETURN, the rest
                                        -> ISTIO_IN_REDIRECT (REDIRECT --to-ports 15006)
  nat OUTPUT      -> ISTIO_OUTPUT       outbound: excluded ports, the inbound passthrough source
                                        127.0.0.6 (::6), the proxy UID/GID (never loop), loopback
                                        (never captured, except the proxy calling its own pod IP,
                                        which goes to the inbound listener), excluded CIDRs; the
                                        rest -> ISTIO_REDIRECT (REDIRECT --to-ports 15001)

Only the nat table is written. The text is applied with ``iptables-restore --noflush`` so the
rules land in one transaction and every other table / chain is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.proxy_init.options import CaptureConfig

BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
ISTIO_CHAIN_PREFIX = "ISTIO_"

# iptables' multiport match takes at most 15 ports per rule.
_MULTIPORT_MAX = 15


@dataclass(frozen=True)
class Family:
    """What differs between the IPv4 and IPv6 rule sets."""

    version: int                 # 4 or 6
    tool: str                    # "iptables" or "ip6tables"
    passthrough_source: str      # Istio's InboundPassthroughCluster binds this source address
    loopback: str                # default; IPv4 takes --host-ipv4-loopback-cidr


IPV4 = Family(4, "iptables", "127.0.0.6/32", "127.0.0.1/32")
IPV6 = Family(6, "ip6tables", "::6/128", "::1/128")


class _NatTable:
    """Rule lines in the order they are added; -N for each of our chains, first-use order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.chains: list[str] = []

    def _use(self, chain: str) -> None:
        if chain not in BUILTIN_CHAINS and chain not in self.chains:
            self.chains.append(chain)

    def append(self, chain: str, *args: str) -> None:
        self._use(chain)
        self.lines.append(" ".join(("-A", chain) + args))

    def insert(self, chain: str, position: int, *args: str) -> None:
        self._use(chain)
        self.lines.append(" ".join(("-I", chain, str(position)) + args))

    def render(self) -> str:
        body = [f"-N {chain}" for chain in self.chains] + self.lines
        return "* nat\n" + "".join(line + "\n" for line in body) + "COMMIT\n"


def _port_matches(proto: str, ports: tuple[int, ...]) -> list[tuple[str, ...]]:
    """One match per rule: ``--dport P`` for one port, ``-m multiport --dports a,b`` for several
    (Istio's outbound-ports-exclude-single.golden / outbound-ports-exclude.golden)."""
    if len(ports) == 1:
        return [("-p", proto, "--dport", str(ports[0]))]
    chunks = [ports[i:i + _MULTIPORT_MAX] for i in range(0, len(ports), _MULTIPORT_MAX)]
    return [("-p", proto, "-m", "multiport", "--dports", ",".join(map(str, chunk)))
            for chunk in chunks if chunk]


def nat_table(cfg: CaptureConfig, family: Family) -> _NatTable:
    """The rules for one family, appended in istio-iptables' order (capture/run.go Run())."""
    t = _NatTable()
    loopback = cfg.host_ipv4_loopback_cidr if family.version == 4 else family.loopback
    tunnel = str(cfg.inbound_tunnel_port)

    # Excluded interfaces: nothing in or out of them is captured.
    for nic in cfg.exclude_interfaces:
        t.append("PREROUTING", "-i", nic, "-j", "RETURN")
        t.append("OUTPUT", "-o", nic, "-j", "RETURN")
    # Virtual (VM) interfaces: their inbound traffic is not captured as inbound...
    for nic in cfg.kube_virt_interfaces:
        t.insert("PREROUTING", 1, "-i", nic, "-j", "RETURN")

    t.append("ISTIO_INBOUND", "-p", "tcp", "--dport", tunnel, "-j", "RETURN")
    t.append("ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(cfg.proxy_port))
    t.append("ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports",
             str(cfg.inbound_capture_port))

    # Inbound.
    if cfg.inbound_ports_wildcard or cfg.inbound_ports:
        t.append("PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
        if cfg.inbound_ports_wildcard:
            if cfg.inbound_ports_exclude:
                for match in _port_matches("tcp", cfg.inbound_ports_exclude):
                    t.append("ISTIO_INBOUND", *match, "-j", "RETURN")
            t.append("ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT")
        else:
            for port in cfg.inbound_ports:
                t.append("ISTIO_INBOUND", "-p", "tcp", "--dport", str(port), "-j", "ISTIO_IN_REDIRECT")

    # Outbound. All protocols enter ISTIO_OUTPUT; only TCP is redirected (ISTIO_REDIRECT is -p tcp).
    t.append("OUTPUT", "-j", "ISTIO_OUTPUT")
    if cfg.outbound_ports_exclude:
        for proto in ("tcp", "udp"):
            for match in _port_matches(proto, cfg.outbound_ports_exclude):
                t.append("ISTIO_OUTPUT", *match, "-j", "RETURN")

    # The sidecar's inbound passthrough connects to the app from 127.0.0.6 (::6): never capture it.
    t.append("ISTIO_OUTPUT", "-o", "lo", "-s", family.passthrough_source, "-j", "RETURN")

    # If the user asked to capture a loopback range (-i 127.x), app -> lo must not short-circuit.
    include_loopback = any(net.network_address.is_loopback for net in cfg.outbound_cidrs)
    for match_owner, owners in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in owners:
            # The proxy calling the pod's own (non-loopback) address over lo, e.g. app -> proxy
            # (outbound) -> proxy (inbound) -> app: send it to the inbound listener.
            t.append("ISTIO_OUTPUT", "-o", "lo", "!", "-d", loopback, "-p", "tcp", "!", "--dport",
                     tunnel, "-m", "owner", match_owner, owner, "-j", "ISTIO_IN_REDIRECT")
            # The app calling its own pod address over lo goes straight to it.
            if not include_loopback:
                t.append("ISTIO_OUTPUT", "-o", "lo", "-m", "owner", "!", match_owner, owner,
                         "-j", "RETURN")
            # Everything else the proxy sends leaves as is: no loop.
            t.append("ISTIO_OUTPUT", "-m", "owner", match_owner, owner, "-j", "RETURN")

    # localhost is never captured.
    t.append("ISTIO_OUTPUT", "-d", loopback, "-j", "RETURN")
    for net in cfg.outbound_cidrs_exclude:
        if net.version == family.version:
            t.append("ISTIO_OUTPUT", "-d", str(net), "-j", "RETURN")
    for port in cfg.outbound_ports:
        t.append("ISTIO_OUTPUT", "-p", "tcp", "--dport", str(port), "-j", "ISTIO_REDIRECT")
    if cfg.outbound_cidrs_wildcard:
        t.append("ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT")
        # ...it is captured as outbound instead.
        for nic in cfg.kube_virt_interfaces:
            t.insert("PREROUTING", 1, "-i", nic, "-j", "ISTIO_REDIRECT")
    else:
        for net in cfg.outbound_cidrs:
            if net.version != family.version:
                continue
            for nic in cfg.kube_virt_interfaces:
                t.insert("PREROUTING", 1, "-i", nic, "-d", str(net), "-j", "ISTIO_REDIRECT")
            t.append("ISTIO_OUTPUT", "-d", str(net), "-j", "ISTIO_REDIRECT")
    return t


def restore_input(cfg: CaptureConfig, family: Family) -> str:
    """The ``iptables-restore --noflush`` input for one family."""
    return nat_table(cfg, family).render()


def rule_lines(cfg: CaptureConfig, family: Family) -> list[str]:
    """The -A / -I lines alone (what the unit tests compare)."""
    return list(nat_table(cfg, family).lines)


def builtin_chain_rules(cfg: CaptureConfig, family: Family) -> list[str]:
    """Our rules in built-in chains that jump nowhere of ours (-c / -k RETURN rules), as
    ``-A CHAIN ...`` lines: cleanup cannot find them by their target, so it looks for these."""
    out = []
    for line in nat_table(cfg, family).lines:
        words = line.split()
        chain = words[1]
        if chain not in BUILTIN_CHAINS:
            continue
        target = words[words.index("-j") + 1]
        if target.startswith(ISTIO_CHAIN_PREFIX):
            continue
        if words[0] == "-I":            # "-I CHAIN 1 ..." -> "-A CHAIN ..." as iptables-save shows it
            words = ["-A", chain] + words[3:]
        out.append(" ".join(words))
    return out
