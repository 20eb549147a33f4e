"""Adapters: one interface over declarative and Python projections.

The projector (`projections.worker.Worker`) drives a projection through its adapter:
build the table, fold a batch of events, describe its definition.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import operator
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    MetaData,
    Table,
    Text,
    func,
    select,
)

from ledger.config import Config
from ledger.errors import ConfigError
from ledger.recorder import recorder_for
from ledger.recorder.portable import is_sql_keyword
from ledger.recorder.schema import own_names
from projections.declarative import KEPT, Definition, HandlerError, RowState, fold, keys_of
from projections.indexes import add_sort_indexes
from projections.model import Event
from projections.python import Projection, file_digest, load_class, source_file
from projections.table_sql import RowSql, row_sql


def reserved_names() -> frozenset[str]:
    """Names a projection (a SQL view) cannot take: hookledger's own tables and indexes,
    derived from the metadata the migrations build, never restated by hand."""
    import projections.schema  # noqa: F401  (adds the registry's metadata to OWN_METADATA)

    return own_names()


MAX_NAME = 40  # p_<name>_v<version> and stage_p_<name>_v<version> stay under 63 bytes
SQL_TYPES = {"text": Text, "integer": BigInteger, "number": Float, "boolean": Boolean}
COPY_ROWS = 1000


@dataclass
class Outcome:
    """What applying a batch did: handler errors, where a halt stopped it, and the rows.

    `rows_added` is the change in the version's row count (tombstones excluded);
    `rows_total`, when not None, is the table's count after the batch instead."""

    errors: list[tuple[int, str, str | None]] = field(default_factory=list)
    halted_at: int | None = None
    rows_added: int = 0
    rows_total: int | None = None


class Adapter:
    """A projection as the engine sees it."""

    name: str
    kind: str
    fingerprint: str
    on_error: str
    source: str | None
    types: tuple[str, ...] | None
    tombstones: bool = False
    stored_definition: str | None = None  # kept with each version, to apply it as it was built

    def build_table(self, table_name: str) -> Table:
        """The table of one version, named `table_name`."""
        raise NotImplementedError

    def fingerprint_now(self) -> str:
        """The fingerprint of the definition as it is on disk now (`status` compares it
        with what the workers built): a Python projection's code may have changed."""
        return self.fingerprint

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> Outcome:
        """Apply a batch in the caller's transaction."""
        raise NotImplementedError

    def wants(self, event: Event) -> bool:
        return (
            event.duplicate_of is None
            and (self.source is None or event.source == self.source)
            and (self.types is None or event.event_type in self.types)
        )


class DeclarativeAdapter(Adapter):
    """Drives a `Definition`: load the touched rows' guard, fold, upsert the winners."""

    kind = "declarative"
    tombstones = True
    copy_rows = COPY_ROWS  # PostgreSQL: from this many winners a batch COPYs them

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self.name = definition.name
        self.fingerprint = definition.fingerprint
        self.on_error = definition.on_error
        self.source = definition.source
        self.types = definition.types
        self.stored_definition = definition.to_json()

    def build_table(self, table_name: str) -> Table:
        d = self.definition
        table = Table(
            table_name,
            MetaData(),
            *(Column(k, Text, primary_key=True) for k in d.key_columns),
            *(Column(c.name, SQL_TYPES[c.type]) for c in d.columns),
            Column("data", JSON),
            Column("version", Text),
            Column("position", BigInteger, nullable=False),
            Column("deleted", Boolean, nullable=False),
        )
        return add_sort_indexes(table, d.key_columns, (*d.column_names, "position"))

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> Outcome:
        with gc_paused():
            wanted = [e for e in events if self.wants(e)]
            keys = keys_of(self.definition, wanted)
            ordered = index_order({k for k in keys if not isinstance(k, HandlerError)})
            current = self.load(conn, table, ordered)
            result = fold(self.definition, wanted, current, keys)
            winners = [row for row in map(result.rows.get, ordered) if row is not None]
            self.write(conn, table, winners)
        return Outcome(
            [(p, m, None) for p, m in result.errors],
            result.halted_at,
            rows_added=live_rows_added(current, winners),
        )

    def load(
        self, conn: Connection, table: Table, keys: Sequence[tuple[str, ...]]
    ) -> dict[tuple[str, ...], RowState]:
        """What the ordering guard needs of the rows with these keys.

        Columns and data stay in the database (KEPT): only a tombstone would carry
        them over, and `write` leaves them in place for it."""
        if not keys:
            return {}
        sql = _sql(conn, table, self.definition)
        width = len(self.definition.key_columns)
        found: dict[tuple[str, ...], RowState] = {}
        cursor = conn.connection.cursor()
        try:
            for statement, params in sql.loads(keys):
                cursor.execute(statement, params)
                for row in cursor.fetchall():
                    key = tuple(row[:width])
                    found[key] = RowState(
                        key, KEPT, KEPT, row[width], row[width + 1], bool(row[width + 2])
                    )
        finally:
            cursor.close()
        return found

    def write(self, conn: Connection, table: Table, rows: Iterable[RowState]) -> None:
        """Upsert the winning state of each key, in the order given, as plain driver parameters.

        A tombstone over a row loaded for the guard only updates the guard columns."""
        sql = _sql(conn, table, self.definition)
        columns_of = _columns_getter(self.definition.column_names)
        dumps = orjson.dumps
        full: list[tuple[Any, ...]] = []
        kept: list[tuple[Any, ...]] = []
        for row in rows:
            if row.data is KEPT:
                kept.append((row.version, row.position, row.deleted, *row.key))
            else:
                # As SQLAlchemy's JSON type stored it (None is JSON null, not SQL NULL).
                data = dumps(row.data).decode()
                full.append(
                    row.key
                    + columns_of(row.columns)
                    + (data, row.version, row.position, row.deleted)
                )
        cursor = conn.connection.cursor()
        try:
            if sql.staged and len(full) >= self.copy_rows:
                # PostgreSQL: COPY into a transaction-scoped staging table, then one
                # set-based upsert, instead of one INSERT per row.
                cursor.execute(sql.stage)
                with cursor.copy(sql.copy) as copy:
                    for values in full:
                        copy.write_row(values)
                cursor.execute(sql.merge)
                cursor.execute(sql.unstage)
            elif full:
                cursor.executemany(sql.upsert, full)
            if kept:
                cursor.executemany(sql.tombstone, kept)
        finally:
            cursor.close()


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_paused_by_us = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector off while a batch builds its objects.

    A batch parses thousands of JSON documents: each is a tracked container, and
    the collector's passes over them cost as much as the fold itself. Nothing a
    batch builds is cyclic, so reference counting frees it all anyway. Nested and
    threaded uses share one count; a collector already disabled when the first pause
    begins stays so (one disabled by someone else during a pause is re-enabled)."""
    global _gc_pauses, _gc_paused_by_us
    with _gc_lock:
        if _gc_pauses == 0 and gc.isenabled():
            gc.disable()
            _gc_paused_by_us = True
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_paused_by_us:
                _gc_paused_by_us = False
                gc.enable()


def live_rows_added(before: dict[tuple[str, ...], RowState], after: Iterable[RowState]) -> int:
    """How many live (non-tombstone) rows writing `after` over `before` adds (or removes)."""
    added = 0
    for row in after:
        old = before.get(row.key)
        added += (not row.deleted) - (old is not None and not old.deleted)
    return added


def index_order(keys: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Keys roughly in primary-key order, for the load and the write alike: neighbouring
    keys share pages, so each page is read and written once per batch.

    Sorting on one joined string is twice as fast as comparing tuples; a part holding
    a NUL can only land a key out of place, which costs locality, not correctness."""
    return sorted(keys, key="\x00".join)


@functools.lru_cache(maxsize=256)
def _columns_getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The declared columns' values of a row, as a tuple in declaration order."""
    if not names:
        return lambda _: ()
    if len(names) == 1:
        (name,) = names
        return lambda columns: (columns[name],)
    return operator.itemgetter(*names)


def _sql(conn: Connection, table: Table, defn: Definition) -> RowSql:
    return row_sql(recorder_for(conn), table.name, defn)


class PythonAdapter(Adapter):
    """Drives a user's `Projection`; finds the failing event of a batch by bisecting to one."""

    kind = "python"

    def __init__(self, name: str, impl: Projection, spec: str, on_error: str) -> None:
        self.name = name
        self.impl = impl
        self.on_error = on_error
        self.source = impl.source
        self.types = tuple(impl.types) if impl.types is not None else None
        self.spec = spec
        self.code_file = source_file(impl)
        self.fingerprint = self._fingerprint(file_digest(self.code_file))

    def _fingerprint(self, code: str) -> str:
        """Class, version and the module's source: editing the code builds a new version."""
        text = f"python:{self.spec}:{self.impl.version}:{code}"
        return hashlib.sha256(text.encode()).hexdigest()

    def fingerprint_now(self) -> str:
        return self._fingerprint(file_digest(self.code_file))

    def build_table(self, table_name: str) -> Table:
        return self.impl.table(MetaData(), table_name)

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> Outcome:
        wanted = [e for e in events if self.wants(e)]
        if not wanted:
            return Outcome()
        try:
            with conn.begin_nested():
                self.impl.apply(conn, table, wanted)
            outcome = Outcome()
        except Exception:
            outcome = self._one_by_one(conn, table, wanted)
        # A Python projection writes its tables itself: its rows are counted once per
        # batch that applied anything, in the batch's transaction (readers never count).
        outcome.rows_total = conn.execute(select(func.count()).select_from(table)).scalar() or 0
        return outcome

    def _one_by_one(self, conn: Connection, table: Table, wanted: Sequence[Event]) -> Outcome:
        """The batch failed: apply event by event to find (and record) the failing ones."""
        outcome = Outcome()
        for event in wanted:
            try:
                with conn.begin_nested():
                    self.impl.apply(conn, table, [event])
            except Exception as e:
                outcome.errors.append((event.position, _describe(e), traceback.format_exc()))
                if self.on_error == "halt":
                    outcome.halted_at = event.position
                    return outcome
        return outcome


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def load_adapters(config: Config) -> dict[str, Adapter]:
    """Every projection of the config, validated; ConfigError names file and key.

    Python projections import with the config file's folder on the import path."""
    where = config.path or "<defaults>"
    folder = str(Path(config.path).resolve().parent) if config.path else None
    out: dict[str, Adapter] = {}
    for name, raw in config.projections.items():
        if (
            not name.isascii()
            or not name[:1].isalpha()
            or not all(c.isalnum() or c == "_" for c in name)
            or name != name.lower()
        ):
            raise ConfigError(
                f"{where}: projections.{name}: names are lower-case letters, digits and _ "
                "(the name is also a SQL view)"
            )
        if name in reserved_names() or name.startswith("p_"):
            raise ConfigError(
                f"{where}: projections.{name}: the name is reserved (hookledger's own tables, "
                "their indexes, and p_* are taken): choose another"
            )
        if len(name) > MAX_NAME:
            raise ConfigError(
                f"{where}: projections.{name}: names are at most {MAX_NAME} characters (its "
                "versions' tables, p_NAME_vN, must fit PostgreSQL's 63-byte identifiers)"
            )
        if is_sql_keyword(name):
            raise ConfigError(
                f"{where}: projections.{name}: {name!r} is an SQL keyword, and the name is "
                "also a SQL view: choose another"
            )
        if "class" in raw:
            extra = set(raw) - {"class", "on_error"}
            if extra:
                raise ConfigError(
                    f"{where}: projections.{name}.{sorted(extra)[0]}: unknown key for a "
                    "Python projection (expected class, on_error)"
                )
            on_error = raw.get("on_error", "halt")
            if on_error not in ("halt", "skip"):
                raise ConfigError(f"{where}: projections.{name}.on_error: expected halt or skip")
            impl = load_class(str(raw["class"]), f"{where}: projections.{name}.class", folder)
            out[name] = PythonAdapter(name, impl, str(raw["class"]), on_error)
        else:
            out[name] = DeclarativeAdapter(Definition.parse(name, raw, where))
        source = out[name].source
        if source is not None and source not in config.sources:
            key = "class" if "class" in raw else "source"
            known = ", ".join(sorted(config.sources)) or "none"
            raise ConfigError(
                f"{where}: projections.{name}.{key}: no source named {source!r} is configured "
                f"(sources: {known})"
            )
    return out
