"""envoy.filters.http.header_mutation: request and response header mutations, per route too."""
