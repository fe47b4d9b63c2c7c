"""Metric probes: each reads from a root it is given and returns a typed record."""
