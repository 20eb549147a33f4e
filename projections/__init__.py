"""Projector engine and projection definitions (built on the ledger)."""
