"""Benchmarks and GPU checks: what the docs quote is measured here."""
