"""Benchmarks of mdfast (installed as ``mdfast.bench`` so that ``mdfast bench`` runs them)."""
