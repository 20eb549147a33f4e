"""Exceptions raised by hookledger, as one tree.

    HookledgerError                  base of everything we raise on purpose
    ├── ConfigError                  a config file or value is wrong (CLI exit 2)
    ├── StorageUnavailable           the database cannot take or serve the request now (HTTP 503)
    ├── NotMigrated                  the database has no ledger schema yet (run `hookledger migrate`)
    ├── StatementFailed              the database refused a statement: a bug, not an outage (HTTP 500)
    ├── ValueRefused                 a value the database cannot hold, e.g. NUL in PostgreSQL text (400)
    ├── ChainBroken                  the hash chain or a body digest does not match
    └── ImportRefused                an import cannot proceed (ledger not empty, bad line, broken chain)

Driver exceptions (sqlite3, psycopg) are translated into these at the
storage boundary (`ledger.recorder.translated`, classified by `storage_error`) and never reach users.
"""

from __future__ import annotations


class HookledgerError(Exception):
    """Base of all hookledger errors; its message is one line for a person."""


class ConfigError(HookledgerError):
    """Raised when a config file or value is wrong."""


class StorageUnavailable(HookledgerError):
    """Raised when the database cannot take or serve a request right now."""


class NotMigrated(HookledgerError):
    """Raised when the database lacks the ledger tables."""


class StatementFailed(HookledgerError):
    """Raised when the database refuses a statement (no such column, syntax): retrying is futile."""


class ValueRefused(HookledgerError):
    """Raised when a value cannot be bound at all (PostgreSQL text holds no NUL): the
    request is wrong, not the server."""


class ChainBroken(HookledgerError):
    """Raised when a chain link or a body digest does not match."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"chain broken at position {position}: {reason}")
        self.position = position
        self.reason = reason


class ImportRefused(HookledgerError):
    """Raised when an import cannot proceed."""
