"""The ``proxy-init`` command: parse flags, then dry-run (print), clean up, or install.

Exit status: 0 done, 1 iptables failed (message on stderr), 2 bad flags.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from sidecar.proxy_init import apply, cleanup, iptables
from sidecar.proxy_init.options import OptionError, parse
from sidecar.proxy_init.rules import IPV4, IPV6, restore_input

log = logging.getLogger("proxy_init")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s proxy-init: %(message)s")
    try:
        cfg = parse(argv)
    except OptionError as exc:
        print(f"proxy-init: error: {exc}", file=sys.stderr)
        return 2

    if cfg.dry_run:
        fams = apply.families(cfg, check_tools=False)
        if cfg.cleanup:
            print("# --cleanup: every ISTIO_* chain and every rule jumping into one would be "
                  "removed (" + ", ".join(f.tool for f in fams) + ")")
            return 0
        # Istio's restore-format dry run: one "* nat ... COMMIT" block per family.
        sys.stdout.write("".join(restore_input(cfg, fam) for fam in fams))
        return 0

    try:
        if cfg.cleanup:
            # Clean every family that has tools, whatever the addresses: rules may outlive them.
            for fam in (IPV4, IPV6):
                for tables in iptables.cleanup_targets(fam, cfg.iptables_backend):
                    if fam is IPV4 or tables.available():
                        cleanup.cleanup(cfg, tables)
            log.info("cleanup done")
            return 0
        fams = apply.families(cfg, check_tools=True)
        installed = apply.install(cfg, fams)
        log.info("capture rules installed (%s)", ", ".join(t.name for t in installed))
        return 0
    except iptables.IptablesError as exc:
        print(f"proxy-init: error: {exc}", file=sys.stderr)
        return 1
