"""Database engines and the one boundary where driver errors become ours.

SQLite runs in WAL mode with `synchronous=FULL`; writers open their
transaction with `BEGIN IMMEDIATE` so they queue for the write lock up
front instead of failing half-way. PostgreSQL URLs use psycopg 3.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from ledger.errors import (
    HookledgerError,
    NotMigrated,
    StatementFailed,
    StorageUnavailable,
    ValueRefused,
)
from ledger.schema import own_names

SQLITE_BUSY_MS = 5000


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and route them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine configured for the ledger's durability and locking rules."""
    url = normalize_url(url)
    json = {"json_serializer": _dumps, "json_deserializer": orjson.loads}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **json)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True, **json)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("writer") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def writer(conn: Connection) -> Connection:
    """Mark a connection as a writer (SQLite: BEGIN IMMEDIATE)."""
    return conn.execution_options(writer=True)


# What the drivers raise themselves: the hot paths use raw driver cursors, outside
# SQLAlchemy's wrapping.
def sqlite_driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `conn`, for statements sent straight to the driver
    (inside the transaction `conn` began; `translated` maps what it raises)."""
    return conn.connection.dbapi_connection  # type: ignore[return-value]


def pg_driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under `conn`: pipelines, RawCursor, `prepare=False`."""
    return conn.connection.dbapi_connection  # type: ignore[return-value]


_DRIVER_ERRORS = (sqlite3.Error, psycopg.Error)
# sqlite3 raises OperationalError both for "locked" and for "no such column": tell them
# apart by message. PostgreSQL says it in the SQLSTATE class.
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
            return StorageUnavailable(f"database unavailable: {_first_line(error.orig or error)}")
        error = error.orig or error
    if isinstance(error, sqlite3.IntegrityError | psycopg.IntegrityError):
        return None
    if not isinstance(error, _DRIVER_ERRORS):
        return None
    text = _first_line(error)
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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
