"""tls_inspector.* and http_inspector.*: the inspectors' counters, at the root as Envoy 1.40
shows them (present once a listener uses the filter)."""

from __future__ import annotations

from sidecar.stats import Scope


class TlsInspectorStats(Scope):
    COUNTERS = ("alpn_found", "alpn_not_found", "client_hello_too_large", "sni_found",
                "sni_not_found", "tls_found", "tls_not_found")
    __slots__ = COUNTERS
    PROM_PREFIX = "envoy_tls_inspector_"
    DOTTED_PREFIX = "tls_inspector."


class HttpInspectorStats(Scope):
    COUNTERS = ("http10_found", "http11_found", "http2_found", "http_not_found", "read_error")
    __slots__ = COUNTERS
    PROM_PREFIX = "envoy_http_inspector_"
    DOTTED_PREFIX = "http_inspector."
