"""The Starlette application: ingest, audit, state queries and admin."""
