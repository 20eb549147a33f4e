"""Exceptions raised by hookledger, as one tree, and how each is answered.

Every class carries its answer as class attributes: `status` (HTTP), `code` (the
`error` of the JSON body), `headers` (e.g. Retry-After) and `exit_code` (CLI). The
API, the ingest path, the console and the CLI read them here (`api.errors.answer_for`,
`ledger.command_line.print_error`) instead of keeping tables of their own.

    HookledgerError                  500 internal_error  base of everything we raise on purpose
    │                                                    (internal_error: a bug, its message is
    │                                                    logged, never answered; CLI exit 1)
    ├── ConfigError                  500 internal_error  a config file or value is wrong (CLI exit 2)
    ├── ImportRefused                500 internal_error  an import cannot proceed (CLI only)
    ├── StorageUnavailable           503 storage_unavailable  the database cannot serve now (Retry-After)
    ├── NotMigrated                  503 not_migrated    no ledger schema yet (Retry-After)
    ├── StatementFailed              500 database_error  the database refused a statement: a bug
    ├── ValueRefused                 400 bad_request     a value the database cannot hold (NUL in PG text)
    │   projections/ (defined there, beside what raises them)
    ├── model.HandlerError           500 internal_error  an event a projection cannot apply (recorded)
    ├── ordering.VersionError        500 internal_error  versions of different kinds (also a ValueError)
    ├── reads.QueryError             400 bad_request     a rows query to refuse (also a ValueError)
    │   └── reads.ChangesNotSupported 400 changes_not_supported  /changes of a table with no position
    ├── reads.NotBuilt               503 projection_building  no live version yet (Retry-After;
    │   │                                                    also a LookupError)
    │   └── reads.BuildFailed        503 projection_failed   none: its first build halted
    ├── versions.RebuildRefused      409 rebuild_refused  a rebuild cannot be faithful (erased bodies)
    │   destinations/
    ├── store.DestinationRefused     409 destination_state  an action the destination's state refuses
    │   api/
    ├── errors.ApiError              status and code given per instance (with headers)
    ├── errors.NotReady              503 not_ready       /readyz: the database is away (Retry-After)
    └── console.session.ConsoleError status given per instance, with a page title

Driver exceptions (sqlite3, psycopg) are translated into these at the
storage boundary (`ledger.recorder.translated`, classified by `storage_error`) and never reach users.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

RETRY_AFTER_SECONDS = "2"
RETRY = MappingProxyType({"Retry-After": RETRY_AFTER_SECONDS})
INTERNAL = "internal_error"  # the code of a bug: answered with a generic sentence, logged


class HookledgerError(Exception):
    """Base of all hookledger errors; its message is one line for a person."""

    status: int = 500
    code: str = INTERNAL
    headers: Mapping[str, str] | None = None
    exit_code: int = 1


class ConfigError(HookledgerError):
    """Raised when a config file or value is wrong."""

    exit_code = 2


class StorageUnavailable(HookledgerError):
    """Raised when the database cannot take or serve a request right now."""

    status, code, headers = 503, "storage_unavailable", RETRY


class NotMigrated(HookledgerError):
    """Raised when the database lacks the ledger tables."""

    status, code, headers = 503, "not_migrated", RETRY


class StatementFailed(HookledgerError):
    """Raised when the database refuses a statement (no such column, syntax): retrying is futile."""

    code = "database_error"


class ValueRefused(HookledgerError):
    """Raised when a value cannot be bound at all (PostgreSQL text holds no NUL): the
    request is wrong, not the server."""

    status, code = 400, "bad_request"


class ImportRefused(HookledgerError):
    """Raised when an import cannot proceed."""
