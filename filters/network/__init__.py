"""Network filters: tcp_proxy, and the glue that starts the HTTP connection manager."""
