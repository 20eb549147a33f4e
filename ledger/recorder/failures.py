"""The one place driver errors become ours: unavailable (retry) or wrong (a bug).

Every verb of the recorder runs under `translated()`; so does any caller that commits
a transaction it owns. The classification reads each driver's own signals: sqlite3
says "locked" and "no such column" with the same class, so by message; PostgreSQL
says it in the SQLSTATE class.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator

import psycopg
from sqlalchemy import exc as sa_exc

from ledger.errors import (
    HookledgerError,
    NotMigrated,
    StatementFailed,
    StorageUnavailable,
    ValueRefused,
)
from ledger.recorder.schema import own_names

# What a database failure can be raised as: SQLAlchemy's wrapper or the driver itself
# (the hot paths use raw driver cursors, outside SQLAlchemy's wrapping).
DATABASE_ERRORS = (sa_exc.SQLAlchemyError, sqlite3.Error, psycopg.Error)
_DRIVER_ERRORS = (sqlite3.Error, psycopg.Error)
_SQLITE_AWAY = (
    "database is locked",
    "database table is locked",
    "unable to open database",
    "disk i/o error",
    "database or disk is full",
    "readonly database",
    "file is not a database",
    "database disk image is malformed",
    "locking protocol",
    "closed database",
    "interrupted",
)
_PG_AWAY_CLASSES = ("08", "53", "57P", "58")  # connection, resources, shutdown, system
_PG_AWAY_STATES = ("40001", "40P01", "55P03", "57014")  # serialization, deadlock, lock, cancel


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn driver failures into StorageUnavailable, NotMigrated or StatementFailed."""
    try:
        yield
    except (sa_exc.SQLAlchemyError, *_DRIVER_ERRORS) as e:
        ours = storage_error(e)
        if ours is None:
            raise
        raise ours from e


def storage_error(error: BaseException) -> HookledgerError | None:
    """Our exception for a database error, or None for one callers handle (integrity).

    The one classification: "the database is away or locked" (StorageUnavailable: 503,
    retry), "the ledger tables are missing" (NotMigrated), "this statement is wrong"
    (StatementFailed: a bug, 500), "this value cannot be bound" (ValueRefused: 400)."""
    if isinstance(error, sa_exc.TimeoutError):
        return StorageUnavailable("database connection pool exhausted")
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return StorageUnavailable(f"database unavailable: {first_line(error.orig or error)}")
        error = error.orig or error
    if isinstance(error, sqlite3.IntegrityError | psycopg.IntegrityError):
        return None
    if not isinstance(error, _DRIVER_ERRORS):
        return None
    text = first_line(error)
    if isinstance(error, psycopg.DataError) and "nul (0x00)" in text.lower():
        return ValueRefused("text values cannot contain NUL (\\x00) characters")
    if _missing_ledger_table(error, text.lower()):
        return NotMigrated("the database has no ledger tables: run `hookledger migrate`")
    if _away(error, text.lower()):
        return StorageUnavailable(f"database unavailable: {text}")
    return StatementFailed(f"database error: {text}")


def _away(error: BaseException, text: str) -> bool:
    if isinstance(error, sqlite3.Error):
        return isinstance(error, sqlite3.InterfaceError) or any(m in text for m in _SQLITE_AWAY)
    state = getattr(error, "sqlstate", None)
    if state is None:  # raised by psycopg itself: a lost or closed connection
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith(_PG_AWAY_CLASSES) or state in _PG_AWAY_STATES


def _missing_ledger_table(error: BaseException, text: str) -> bool:
    """Is this "no such table" about one of hookledger's own tables (not a projection's)?"""
    if isinstance(error, sqlite3.Error):
        found = re.search(r"no such table: (?:\w+\.)?(\w+)", text)
    else:
        found = re.search(r'relation "(?:\w+\.)?(\w+)" does not exist', text)
    return found is not None and found.group(1) in own_names()


def is_unavailable(error: BaseException) -> bool:
    """Is this error the database being away or locked (retry), not a wrong statement?"""
    if isinstance(error, StorageUnavailable):
        return True
    return isinstance(storage_error(error), StorageUnavailable)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
