"""Database engines and the one boundary where driver errors become ours.

SQLite runs in WAL mode with `synchronous=FULL`; writers open their
transaction with `BEGIN IMMEDIATE` so they queue for the write lock up
front instead of failing half-way. PostgreSQL URLs use psycopg 3.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import orjson
import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from ledger.errors import NotMigrated, StorageUnavailable

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
# SQLAlchemy's wrapping. Operational errors are the database being away or locked.
_DRIVER_ERRORS = (sqlite3.Error, psycopg.Error)
_DRIVER_OPERATIONAL = (
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn driver failures into StorageUnavailable or NotMigrated."""
    try:
        yield
    except sa_exc.DBAPIError as e:
        operational = isinstance(e, sa_exc.OperationalError | sa_exc.InterfaceError)
        _raise_ours(e.orig or e, operational or e.connection_invalidated)
        raise
    except _DRIVER_ERRORS as e:
        # sqlite3 calls a closed connection a programming error; SQLAlchemy, a disconnect.
        _raise_ours(e, isinstance(e, _DRIVER_OPERATIONAL) or "closed database" in str(e))
        raise
    except sa_exc.TimeoutError as e:
        raise StorageUnavailable("database connection pool exhausted") from e


_SQLITE_AWAY = (
    "locked",
    "busy",
    "unable to open",
    "disk i/o",
    "disk is full",
    "closed database",
    "interrupted",
)
_PG_AWAY_CLASSES = ("08", "53", "57", "58", "40", "55P03")


def is_unavailable(error: BaseException) -> bool:
    """Is this driver error the database being away or locked (retry), not a wrong statement?"""
    if getattr(error, "connection_invalidated", False):
        return True
    error = getattr(error, "orig", None) or error
    if isinstance(error, psycopg.Error):  # psycopg calls a wrong statement a ProgrammingError
        if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        return (error.sqlstate or "").startswith(_PG_AWAY_CLASSES)
    if isinstance(error, sqlite3.Error):
        text = str(error).lower()
        return any(word in text for word in _SQLITE_AWAY)
    return isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError)


def _raise_ours(error: BaseException, operational: bool) -> None:
    """NotMigrated or StorageUnavailable for a driver error that is one of those."""
    text = str(error).lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        raise NotMigrated("the database has no ledger tables: run `hookledger migrate`") from error
    if operational:
        raise StorageUnavailable(f"database unavailable: {_first_line(error)}") from error


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
