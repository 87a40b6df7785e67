"""envoy.filters.http.rbac: role based access control (Istio's AuthorizationPolicy)."""
