"""HTTP filters, one folder each: config parsing (factory.py) and the filter (filter.py)."""
