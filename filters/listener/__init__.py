"""Listener filters: original_dst, http_inspector, tls_inspector (run before a filter chain is chosen)."""
