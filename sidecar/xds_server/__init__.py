"""The development xDS control plane: ``sidecar xds-server --config PATH`` serves YAML over ADS.

resources.py parses the YAML into Envoy protobufs, store.py holds the live set,
watch.py reloads it when the files change, sotw.py / delta.py are the two
protocol state machines (sans-IO), server.py is the gRPC service, cli.py the
command line.  User documentation: docs/xds-server.md.
"""
