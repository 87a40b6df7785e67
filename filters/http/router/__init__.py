"""envoy.filters.http.router: the terminal filter that forwards to the upstream cluster."""
