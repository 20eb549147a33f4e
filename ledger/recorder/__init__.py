"""The recorder: the one way into the log (`events`) and its side tables.

    verb                       what it does                                        who calls it
    append_batch(conn, batch)  number, chain and insert a batch under the head lock  appender, tests
    read_head(conn, lock)      the last position and its hash                      everyone
    get_event / list_events    one event; metadata filtered, after a position      API, console, CLI
    list_newest                metadata newest first, below a position             console
    iter_events(engine, ...)   every column of a range, in short reads             export, verify
    fold_rows                  what a projector folds, straight from the driver    projections
    handover_rows              what a destination wants, with its Content-Type     destinations
    first_ids_before/mark_rows what the marks outside the chain are checked on     ledger.marks
    erased_summary/erase_chunk erase bodies, count what an erasure touches         ledger.erase
    load_rows/finish_load      an import's rows, head and counts                   ledger.transfer
    listener(engine, wake)     wake-ups when another process appends               projectors
    rejections.keep / list_... refused deliveries, under their byte bound          appender, API, CLI

Each verb is a method of `Recorder`; `recorder_for(conn)` gives the backend's one,
which holds every difference between SQLite and PostgreSQL (markers, the head lock,
pipelines, NOTIFY, how lookups are planned; `ledger.recorder.failures` their error
texts). No module outside this package names a backend. Every verb translates
driver errors itself (`translated`), so an outage is StorageUnavailable and a wrong
statement StatementFailed wherever it happens. The functions below are the verbs
as most callers use them, with the backend picked for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, Engine, Row

from ledger.recorder.base import (
    EVENT_COLUMNS,
    FOLD_COLUMNS,
    HANDOVER_COLUMNS,
    ID_CHUNK,
    MARK_COLUMNS,
    Erasable,
    Handover,
    Listener,
    Recorder,
)
from ledger.recorder.engine import make_engine, normalize_url, writer
from ledger.recorder.failures import (
    DATABASE_ERRORS,
    is_unavailable,
    storage_error,
    translated,
)
from ledger.recorder.postgres import PostgresRecorder
from ledger.recorder.records import Appended, LogFilter, NewEvent, Rejection
from ledger.recorder.sqlite import SQLiteRecorder

__all__ = [
    "DATABASE_ERRORS",
    "EVENT_COLUMNS",
    "FOLD_COLUMNS",
    "HANDOVER_COLUMNS",
    "ID_CHUNK",
    "MARK_COLUMNS",
    "Appended",
    "Erasable",
    "Handover",
    "Listener",
    "LogFilter",
    "NewEvent",
    "Recorder",
    "Rejection",
    "add_source_counts",
    "append_batch",
    "get_event",
    "is_unavailable",
    "iter_events",
    "list_events",
    "make_engine",
    "normalize_url",
    "read_head",
    "read_source_counts",
    "recorder_for",
    "storage_error",
    "translated",
    "writer",
]

_BACKENDS: dict[str, Recorder] = {r.name: r for r in (SQLiteRecorder(), PostgresRecorder())}


def recorder_for(bind: Connection | Engine) -> Recorder:
    """The recorder of the database behind `bind`."""
    return _BACKENDS[bind.dialect.name]


def append_batch(conn: Connection, batch: Sequence[NewEvent]) -> list[Appended]:
    """Append `batch` in order, chaining each row; the caller owns the transaction."""
    return _BACKENDS[conn.dialect.name].append_batch(conn, batch)


def read_head(conn: Connection, lock: bool = False) -> tuple[int, str]:
    """The last position and its hash (0 and 64 zeros for an empty log)."""
    return _BACKENDS[conn.dialect.name].read_head(conn, lock)


def read_source_counts(conn: Connection) -> dict[str, int]:
    """Number of events per source, as kept by every writer (no scan of the log)."""
    return recorder_for(conn).source_counts(conn)


def add_source_counts(conn: Connection, counts: dict[str, int]) -> None:
    """Add `counts` (events per source) to `source_counts` (writers other than
    `append_batch`, which adds its own)."""
    recorder_for(conn).add_source_counts(conn, counts)


def get_event(conn: Connection, position: int) -> Row | None:
    """One event with every column, or None."""
    return recorder_for(conn).get(conn, position)


def list_events(
    conn: Connection,
    *,
    source: str | None = None,
    event_type: str | None = None,
    event_id: str | None = None,
    after: int = 0,
    since_us: int | None = None,
    until_us: int | None = None,
    limit: int = 100,
) -> list[Row]:
    """Event metadata in position order after `after`, filtered."""
    where = LogFilter(
        source=source,
        event_type=event_type,
        event_id=event_id,
        since_us=since_us,
        until_us=until_us,
    )
    return recorder_for(conn).list_events(conn, where, after, limit)


def iter_events(
    engine: Engine, start: int = 1, stop: int | None = None, chunk: int = 256
) -> Iterator[Row]:
    """Every column of every event from `start` to `stop` (inclusive), `chunk` rows
    at a time: memory is bounded whatever the size of the log."""
    return recorder_for(engine).iter_events(engine, start, stop, chunk)
