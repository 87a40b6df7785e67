"""envoy.filters.network.tcp_proxy: L4 proxying to a cluster, with half-close and idle timeout."""
