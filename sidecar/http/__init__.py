"""HTTP message model, route selection, local replies and the HTTP/1.1 connection manager."""
