"""proxy-init: installs Istio-compatible iptables capture rules (istio-iptables' flags and chains).

options.py   flags / environment -> CaptureConfig (validated)
rules.py     CaptureConfig -> iptables-restore input, Istio's chains in Istio's rule order
iptables.py  runs iptables-restore / iptables-save (IPv4 and IPv6, nft or legacy), detects IPv6
apply.py     installs the rules atomically (per family, rolled back if the other family fails)
cleanup.py   removes every ISTIO_* chain and the jumps into it, atomically
cli.py       the ``proxy-init`` command (also ``python -m sidecar.proxy_init``)

Nothing here is imported by the proxy runtime.
"""
