"""``python -m sidecar.proxy_init``: the same as the ``proxy-init`` console script."""

from sidecar.proxy_init.cli import main

raise SystemExit(main())
