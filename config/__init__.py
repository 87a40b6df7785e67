"""Envoy v3 configuration in, frozen model out. Pure data: no asyncio, no sockets."""
