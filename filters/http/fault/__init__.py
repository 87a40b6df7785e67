"""envoy.filters.http.fault: Envoy's fault injection filter (delays and aborts)."""
