"""Envoy v3 configuration in, frozen model out. Pure data: no asyncio, no sockets."""

import sidecar  # noqa: F401  (decides between the compiled model and its source, see sidecar/native.py)
