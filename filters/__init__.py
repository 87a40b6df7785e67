"""The filter chain: HTTP filters looked up by Envoy name and type URL, and network filters."""
