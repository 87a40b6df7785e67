"""Removing the capture: every ISTIO_* chain and every rule that jumps into one, in one transaction.

The plan is computed from ``iptables-save`` (so it also removes rules an older or different
proxy-init / istio-iptables run installed) and applied with ``iptables-restore --noflush``:
``-D`` each jump, then ``-F`` / ``-X`` each ISTIO_* chain. Rules in built-in chains that jump
nowhere of ours (the -c / -k interface RETURN rules) are only recognizable from the flags that
created them, as in istio-iptables: pass the same -c / -k to --cleanup.
"""

from __future__ import annotations

import logging
from typing import Iterable

from sidecar.proxy_init import iptables
from sidecar.proxy_init.options import CaptureConfig
from sidecar.proxy_init.rules import ISTIO_CHAIN_PREFIX, builtin_chain_rules

log = logging.getLogger("proxy_init")

TABLES = ("nat", "mangle", "raw")


def _target(words: list[str]) -> str:
    for flag in ("-j", "-g"):
        if flag in words:
            i = words.index(flag)
            if i + 1 < len(words):
                return words[i + 1]
    return ""


def plan(save_text: str, nat_builtin_rules: Iterable[str] = ()) -> str:
    """iptables-restore input that removes our chains and the rules pointing at them from the
    tables in ``save_text`` (iptables-save output); "" when there is nothing to remove."""
    ours_in_nat = set(nat_builtin_rules)
    order: list[str] = []
    chains: dict[str, list[str]] = {}
    deletes: dict[str, list[str]] = {}
    table = ""
    for line in save_text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:].strip()
            if table not in chains:
                order.append(table)
                chains[table], deletes[table] = [], []
        elif line.startswith(":") and table:
            name = line[1:].split()[0]
            if name.startswith(ISTIO_CHAIN_PREFIX):
                chains[table].append(name)
        elif line.startswith("-A ") and table:
            words = line.split()
            if words[1].startswith(ISTIO_CHAIN_PREFIX):
                continue                # goes with its chain's -F
            if _target(words).startswith(ISTIO_CHAIN_PREFIX) or (table == "nat" and line in ours_in_nat):
                deletes[table].append("-D" + line[2:])
    out = []
    for table in order:
        if not chains[table] and not deletes[table]:
            continue
        body = deletes[table] + [f"-F {c}" for c in chains[table]] + [f"-X {c}" for c in chains[table]]
        out.append(f"*{table}\n" + "".join(line + "\n" for line in body) + "COMMIT\n")
    return "".join(out)


def has_istio_chains(tables: iptables.Tables) -> bool:
    return any(line.startswith(":" + ISTIO_CHAIN_PREFIX) for line in tables.save("nat").splitlines())


def cleanup(cfg: CaptureConfig, tables: iptables.Tables) -> str:
    """Remove our rules from one family / backend; returns the restore input applied ("" if
    there was nothing to remove)."""
    saved = "".join(tables.save(table) for table in TABLES)
    text = plan(saved, builtin_chain_rules(cfg, tables.family))
    if text:
        log.info("removing ISTIO_* chains (%s):\n%s", tables.name, text)
        tables.restore(text)
    return text
