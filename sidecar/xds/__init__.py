"""The xDS client: the ADS stream (client.py), resources to model (resources.py), applying them (dynamic.py)."""
