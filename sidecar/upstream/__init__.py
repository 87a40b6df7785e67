"""Upstream side: clusters, hosts, load balancers, connection pools, DNS."""
