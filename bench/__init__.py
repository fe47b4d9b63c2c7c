"""Benchmarks side by side with Glances and node_exporter: ``python -m bench`` runs them all (bench/README.md)."""
