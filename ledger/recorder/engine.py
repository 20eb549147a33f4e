"""Database engines: the one place each backend's connection rules are set.

SQLite runs in WAL mode with `synchronous=FULL`; writers open their
transaction with `BEGIN IMMEDIATE` so they queue for the write lock up
front instead of failing half-way. PostgreSQL URLs use psycopg 3.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import orjson
import psycopg
from sqlalchemy import Connection, Engine, create_engine, event

SQLITE_BUSY_MS = 5000


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and route them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class _OneLine(logging.Filter):
    """SQLAlchemy's pool logs a failed reset of a connection the database dropped (a
    restart, an outage) at ERROR with three chained tracebacks; the outage itself is
    already reported where it happened. Keep it as one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = str(error).strip().splitlines()
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {text[0] if text else ''}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# The pool's loggers are named per pool class (no handler of ours sees them otherwise).
for _pool in ("QueuePool", "NullPool", "SingletonThreadPool", "StaticPool"):
    logging.getLogger(f"sqlalchemy.pool.impl.{_pool}").addFilter(_OneLine())


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
