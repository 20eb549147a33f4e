"""Alembic environment and versions for the ledger's own tables."""
