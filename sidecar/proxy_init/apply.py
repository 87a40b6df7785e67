"""Installing the rules: per family in one iptables-restore transaction, all families or none.

Re-running proxy-init is safe: existing ISTIO_* chains are removed first (istio-iptables'
reconcile), so the rules are never doubled. If the IPv6 rules fail after the IPv4 ones went in,
the IPv4 ones are removed again, so a half-captured pod (IPv6 escaping the proxy) never remains.
"""

from __future__ import annotations

import logging

from sidecar.proxy_init import iptables
from sidecar.proxy_init.cleanup import cleanup, has_istio_chains
from sidecar.proxy_init.options import CaptureConfig
from sidecar.proxy_init.rules import IPV4, IPV6, Family, restore_input

log = logging.getLogger("proxy_init")


def families(cfg: CaptureConfig, *, check_tools: bool) -> list[Family]:
    """IPv4 always; IPv6 when --ipv6 on / --dual-stack, or (auto) when the namespace has a
    routable IPv6 address and ip6tables is installed."""
    if cfg.ipv6 == "off":
        return [IPV4]
    if cfg.ipv6 == "auto":
        if not iptables.has_routable_ipv6():
            return [IPV4]
        if check_tools and not iptables.resolve(IPV6, cfg.iptables_backend).available():
            log.warning("IPv6 addresses present but ip6tables-restore / ip6tables-save missing: "
                        "IPv6 traffic is NOT captured")
            return [IPV4]
    return [IPV4, IPV6]


def install(cfg: CaptureConfig, fams: list[Family]) -> list[iptables.Tables]:
    """Install every family's rules or none; returns where they went."""
    applied: list[iptables.Tables] = []
    try:
        for fam in fams:
            tables = iptables.resolve(fam, cfg.iptables_backend)
            if has_istio_chains(tables):
                log.info("%s: ISTIO_* chains exist; removing them before installing", tables.name)
                cleanup(cfg, tables)
            text = restore_input(cfg, fam)
            log.info("%s-restore --noflush:\n%s", tables.name, text)
            tables.restore(text)
            applied.append(tables)
        if IPV6 in fams:
            iptables.add_ipv6_passthrough_address()
    except iptables.IptablesError:
        for tables in applied:
            try:
                cleanup(cfg, tables)
            except iptables.IptablesError as exc:     # report the first failure, not this one
                log.error("rollback of %s rules failed: %s", tables.name, exc)
        raise
    return applied
