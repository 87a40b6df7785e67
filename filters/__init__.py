"""The filter chain: HTTP filters looked up by Envoy name and type URL, and network filters."""

import sidecar  # noqa: F401  (decides between the compiled hot path and its sources, see sidecar/native.py)
