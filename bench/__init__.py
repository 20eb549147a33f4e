"""Benchmarks: `python -m bench ingest` measures durable signed deliveries per second.

`bench.ingest` drives wrk against `hookledger serve` and three reference
receivers: `bench.ceiling` (stores nothing), `bench.tutorial` (a Flask route
with one SQLite commit per request, on Flask's server) and
`bench.commit_per_request` (the same on Starlette and uvicorn). Results go to
`docs/performance.md`.
"""
