"""proxy-init's flags: istio-iptables' short and long names, their environment variables, validation.

Defaults are those Istio's sidecar injector passes to the istio-init container
(``-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020``), not the
bare istio-iptables binary's (which captures nothing unless -i / -b are given): proxy-init with no
flags captures all inbound and outbound TCP, like an injected pod. Each flag also reads the
environment variable istio-iptables reads (its long name upper-cased, ``-`` -> ``_``, e.g.
ISTIO_INBOUND_PORTS), so a container can be configured with env vars only; a flag wins over it.

Bad values fail here with the flag's name, before any rule is built or applied.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OptionError(ValueError):
    """A flag value proxy-init cannot use; the message names the flag."""


@dataclass(frozen=True)
class CaptureConfig:
    """Validated settings the rule generator reads (lists already split, CIDRs parsed)."""

    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    inbound_ports_wildcard: bool = True
    inbound_ports: tuple[int, ...] = ()
    inbound_ports_exclude: tuple[int, ...] = (15090, 15021, 15020)
    outbound_cidrs_wildcard: bool = True
    outbound_cidrs: tuple[IpNetwork, ...] = ()
    outbound_cidrs_exclude: tuple[IpNetwork, ...] = ()
    outbound_ports: tuple[int, ...] = ()
    outbound_ports_exclude: tuple[int, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    host_ipv4_loopback_cidr: str = "127.0.0.1/32"
    ipv6: str = "auto"                   # "auto" | "on" | "off"
    iptables_backend: str = "auto"       # "auto" | "nft" | "legacy"
    dry_run: bool = False
    cleanup: bool = False


# (short, long, env var, default, help). Long names and env vars are istio-iptables'.
_VALUE_FLAGS: tuple[tuple[str | None, str, str, str, str], ...] = (
    ("-p", "--envoy-port", "ENVOY_PORT", "15001",
     "port outbound TCP is redirected to (the proxy's virtual outbound listener)"),
    ("-z", "--inbound-capture-port", "INBOUND_CAPTURE_PORT", "15006",
     "port inbound TCP is redirected to (the proxy's virtual inbound listener)"),
    ("-e", "--inbound-tunnel-port", "INBOUND_TUNNEL_PORT", "15008",
     "inbound port never captured (Istio's HBONE tunnel port)"),
    ("-u", "--proxy-uid", "PROXY_UID", "1337",
     "comma-separated UIDs whose outbound traffic is not captured (the proxy's user)"),
    ("-g", "--proxy-gid", "PROXY_GID", "",
     "comma-separated GIDs whose outbound traffic is not captured (default: the -u value)"),
    ("-m", "--istio-inbound-interception-mode", "ISTIO_INBOUND_INTERCEPTION_MODE", "REDIRECT",
     "inbound interception mode: REDIRECT (TPROXY is not supported)"),
    ("-b", "--istio-inbound-ports", "ISTIO_INBOUND_PORTS", "*",
     "comma-separated inbound ports to capture, '*' for all, '' for none"),
    ("-d", "--istio-local-exclude-ports", "ISTIO_LOCAL_EXCLUDE_PORTS", "15090,15021,15020",
     "comma-separated inbound ports not captured (only with -b '*')"),
    ("-c", "--istio-exclude-interfaces", "ISTIO_EXCLUDE_INTERFACES", "",
     "comma-separated interfaces whose traffic (in and out) is never captured"),
    ("-i", "--istio-service-cidr", "ISTIO_SERVICE_CIDR", "*",
     "comma-separated outbound CIDRs to capture, '*' for all, '' for none"),
    ("-x", "--istio-service-exclude-cidr", "ISTIO_SERVICE_EXCLUDE_CIDR", "",
     "comma-separated outbound CIDRs not captured"),
    ("-q", "--istio-outbound-ports", "ISTIO_OUTBOUND_PORTS", "",
     "comma-separated outbound ports captured whatever the destination"),
    ("-o", "--istio-local-outbound-ports-exclude", "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "",
     "comma-separated outbound ports not captured"),
    ("-k", "--kube-virt-interfaces", "KUBE_VIRT_INTERFACES", "",
     "comma-separated virtual interfaces whose inbound traffic is treated as outbound"),
    (None, "--host-ipv4-loopback-cidr", "HOST_IPV4_LOOPBACK_CIDR", "127.0.0.1/32",
     "the IPv4 loopback range never captured"),
)

# istio-iptables flags proxy-init recognizes but does not implement: rejected with a reason
# instead of argparse's bare "unrecognized arguments".
_UNSUPPORTED: dict[str, str] = {
    "--istio-inbound-tproxy-mark": "TPROXY interception is not supported",
    "--istio-inbound-tproxy-route-table": "TPROXY interception is not supported",
    "--redirect-dns": "DNS capture (istio-agent's DNS proxy on 15053) is not supported",
    "--capture-all-dns": "DNS capture (istio-agent's DNS proxy on 15053) is not supported",
    "--drop-invalid": "the INVALID-conntrack drop rule is not supported",
    "--iptables-trace-logging": "trace logging rules are not supported",
    "--run-validation": "the iptables validation probe is not supported",
    "--iptables-probe-port": "the iptables validation probe is not supported",
    "--probe-timeout": "the iptables validation probe is not supported",
    "--skip-rule-apply": "use -n / --dry-run to print the rules without applying them",
    "--network-namespace": "run proxy-init inside the namespace (ip netns exec / a shared "
                           "container network) instead",
    "--cni-mode": "CNI mode is not supported",
    "--native-nftables": "native nftables rules are not supported (iptables-nft is: it is what "
                         "iptables-restore runs on Debian)",
    "--reconcile": "proxy-init always reconciles: existing ISTIO_* chains are removed first",
    "--force-apply": "proxy-init always reconciles: existing ISTIO_* chains are removed first",
    "--restore-format": "rules are always printed in iptables-restore format",
}
_UNSUPPORTED_SHORT = {"-t": "--istio-inbound-tproxy-mark", "-r": "--istio-inbound-tproxy-route-table",
                      "-f": "--restore-format"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proxy-init",
        description="Install Istio-compatible iptables rules that redirect a pod's TCP traffic "
                    "to its sidecar (chains ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_OUTPUT, "
                    "ISTIO_REDIRECT). Flags are istio-iptables'.")
    for short, long, env, default, help_text in _VALUE_FLAGS:
        names = [short, long] if short else [long]
        p.add_argument(*names, dest=_dest(long), default=None, metavar="VALUE",
                       help=f"{help_text} (env {env}, default {default!r})")
    p.add_argument("-n", "--dry-run", action="store_true", default=None,
                   help="print the iptables-restore input instead of applying it (env DRY_RUN)")
    p.add_argument("--cleanup", "--cleanup-only", "--clean", dest="cleanup", action="store_true",
                   default=None, help="remove the ISTIO_* chains and the jumps into them, then exit "
                                      "(pass the same -c / -k flags as at install to also remove "
                                      "the interface rules)")
    p.add_argument("--dual-stack", action="store_true", default=None,
                   help="also install the IPv6 rules (same as --ipv6 on; env ISTIO_AGENT_DUAL_STACK "
                        "or DUAL_STACK)")
    p.add_argument("--ipv6", choices=("auto", "on", "off"), default=None,
                   help="IPv6 (ip6tables) rules: auto = when an interface has a non-link-local "
                        "IPv6 address (default), on, off")
    p.add_argument("--iptables-backend", choices=("auto", "nft", "legacy"), default=None,
                   help="iptables flavour: auto = the one that already has rules in this "
                        "namespace (as istio-iptables detects it), else the system's iptables "
                        "(env IPTABLES_BACKEND)")
    for long in _UNSUPPORTED:
        names = [long] + [s for s, lng in _UNSUPPORTED_SHORT.items() if lng == long]
        p.add_argument(*names, dest="unsupported_" + _dest(long), nargs="?", const="",
                       default=None, help=argparse.SUPPRESS)
    return p


def _dest(long: str) -> str:
    return long.lstrip("-").replace("-", "_")


def parse(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> CaptureConfig:
    """Flags (then environment, then defaults) -> CaptureConfig; OptionError on a bad value."""
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(list(argv) if argv is not None else None)
    for long, reason in _UNSUPPORTED.items():
        if getattr(ns, "unsupported_" + _dest(long)) is not None:
            raise OptionError(f"{long}: not supported by proxy-init: {reason}")

    raw: dict[str, str] = {}
    for _short, long, env_name, default, _help in _VALUE_FLAGS:
        value = getattr(ns, _dest(long))
        if value is None:
            value = env.get(env_name, default)
        raw[long] = value.strip()

    mode = raw["--istio-inbound-interception-mode"].upper() or "REDIRECT"
    if mode == "TPROXY":
        raise OptionError("-m / --istio-inbound-interception-mode: TPROXY is not supported by "
                          "proxy-init; use REDIRECT (the sidecar reads the original destination "
                          "with SO_ORIGINAL_DST)")
    if mode != "REDIRECT":
        raise OptionError(f"-m / --istio-inbound-interception-mode: {mode!r} is not a mode "
                          "(REDIRECT or TPROXY)")

    uids = _ids("-u / --proxy-uid", raw["--proxy-uid"])
    if not uids:
        raise OptionError("-u / --proxy-uid: at least one UID is needed, or the proxy's own "
                          "traffic would be captured again (a loop)")
    gids = _ids("-g / --proxy-gid", raw["--proxy-gid"]) or uids

    inbound = raw["--istio-inbound-ports"]
    service_cidr = raw["--istio-service-cidr"]
    exclude_cidr = raw["--istio-service-exclude-cidr"]
    if "*" in split(exclude_cidr):
        raise OptionError("-x / --istio-service-exclude-cidr: '*' is not allowed (use -i '' to "
                          "capture no outbound traffic)")

    loopback = raw["--host-ipv4-loopback-cidr"]
    net = _network("--host-ipv4-loopback-cidr", loopback)
    if net.version != 4 or not net.network_address.is_loopback:
        raise OptionError(f"--host-ipv4-loopback-cidr: {loopback!r} is not an IPv4 loopback range")

    backend = ns.iptables_backend or env.get("IPTABLES_BACKEND", "auto").strip().lower() or "auto"
    if backend not in ("auto", "nft", "legacy"):
        raise OptionError(f"--iptables-backend / IPTABLES_BACKEND: {backend!r} is not auto, nft "
                          "or legacy")
    dual_stack = ns.dual_stack or any(_truthy(env.get(name, ""))
                                      for name in ("ISTIO_AGENT_DUAL_STACK", "DUAL_STACK"))
    ipv6 = ns.ipv6 or ("on" if dual_stack else "auto")
    return CaptureConfig(
        proxy_port=_port("-p / --envoy-port", raw["--envoy-port"]),
        inbound_capture_port=_port("-z / --inbound-capture-port", raw["--inbound-capture-port"]),
        inbound_tunnel_port=_port("-e / --inbound-tunnel-port", raw["--inbound-tunnel-port"]),
        proxy_uids=uids,
        proxy_gids=gids,
        inbound_ports_wildcard=inbound == "*",
        inbound_ports=() if inbound == "*" else _ports("-b / --istio-inbound-ports", inbound),
        inbound_ports_exclude=_ports("-d / --istio-local-exclude-ports",
                                     raw["--istio-local-exclude-ports"]),
        outbound_cidrs_wildcard=service_cidr == "*",
        outbound_cidrs=() if service_cidr == "*" else _cidrs("-i / --istio-service-cidr",
                                                              service_cidr),
        outbound_cidrs_exclude=_cidrs("-x / --istio-service-exclude-cidr", exclude_cidr),
        outbound_ports=_ports("-q / --istio-outbound-ports", raw["--istio-outbound-ports"]),
        outbound_ports_exclude=_ports("-o / --istio-local-outbound-ports-exclude",
                                      raw["--istio-local-outbound-ports-exclude"]),
        exclude_interfaces=_interfaces("-c / --istio-exclude-interfaces",
                                       raw["--istio-exclude-interfaces"]),
        kube_virt_interfaces=_interfaces("-k / --kube-virt-interfaces",
                                         raw["--kube-virt-interfaces"]),
        host_ipv4_loopback_cidr=loopback,
        ipv6=ipv6,
        iptables_backend=backend,
        dry_run=bool(ns.dry_run) or _truthy(env.get("DRY_RUN", "")),
        cleanup=bool(ns.cleanup),
    )


def split(value: str) -> list[str]:
    """Istio's config.Split: comma-separated, blanks dropped ("6000,7000," is two ports)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _port(flag: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise OptionError(f"{flag}: {value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise OptionError(f"{flag}: {port} is not a port number (1-65535)")
    return port


def _ports(flag: str, value: str) -> tuple[int, ...]:
    if "*" in split(value):
        raise OptionError(f"{flag}: '*' is only allowed for -b / --istio-inbound-ports")
    return tuple(_port(flag, part) for part in split(value))


def _ids(flag: str, value: str) -> tuple[str, ...]:
    ids = split(value)
    for ident in ids:
        # iptables' owner match also takes user / group names; keep them, but refuse what
        # would break the rule's syntax.
        if not ident.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise OptionError(f"{flag}: {ident!r} is not a user / group id or name")
    return tuple(ids)


def _network(flag: str, value: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise OptionError(f"{flag}: {value!r} is not a CIDR (e.g. 10.0.0.0/8, fd00::/8)") from None


def _cidrs(flag: str, value: str) -> tuple[IpNetwork, ...]:
    parts = split(value)
    if "*" in parts:
        raise OptionError(f"{flag}: '*' must be the whole value, not one entry of a list")
    return tuple(_network(flag, part) for part in parts)


def _interfaces(flag: str, value: str) -> tuple[str, ...]:
    names = split(value)
    for name in names:
        if len(name) > 15 or any(c.isspace() or c in "/:" for c in name):
            raise OptionError(f"{flag}: {name!r} is not an interface name")
    return tuple(names)
