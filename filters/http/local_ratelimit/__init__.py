"""envoy.filters.http.local_ratelimit: a token bucket per filter config (or per route config)."""
