"""envoy.filters.http.cors: CORS preflights answered locally, access-control-* headers added."""
