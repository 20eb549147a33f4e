"""Benchmarks: `python -m bench ingest` measures durable signed deliveries per second.

`bench.ingest` drives wrk against `hookledger serve` and two reference
receivers: `bench.ceiling` (stores nothing) and `bench.tutorial` (one
SQLite commit per request). Results go to `docs/performance.md`.
"""
