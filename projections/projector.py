"""One interface over declarative and Python projections, for the engine to drive."""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    bindparam,
    select,
)

from ledger.config import Config
from ledger.errors import ConfigError
from projections.declarative import Definition, HandlerError, RowState, fold, keys_of
from projections.model import Event
from projections.python import Projection, load_class

RESERVED_NAMES = {
    "events",
    "ledger_head",
    "rejections",
    "alembic_version",
    "projection_versions",
    "projection_leases",
    "projection_errors",
}
SQL_TYPES = {"text": Text, "integer": BigInteger, "number": Float, "boolean": Boolean}
KEY_CHUNK = 500


@dataclass
class Outcome:
    """What applying a batch did: handler errors and where a halt stopped it."""

    errors: list[tuple[int, str, str | None]] = field(default_factory=list)
    halted_at: int | None = None


class Projector:
    """A projection as the engine sees it."""

    name: str
    kind: str
    fingerprint: str
    on_error: str
    source: str | None
    types: tuple[str, ...] | None
    tombstones: bool = False

    def build_table(self, table_name: str) -> Table:
        """The table of one version, named `table_name`."""
        raise NotImplementedError

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> Outcome:
        """Apply a batch in the caller's transaction."""
        raise NotImplementedError

    def wants(self, event: Event) -> bool:
        return (
            event.duplicate_of is None
            and (self.source is None or event.source == self.source)
            and (self.types is None or event.event_type in self.types)
        )


class DeclarativeProjector(Projector):
    """Drives a `Definition`: load the touched rows, fold, upsert the winners."""

    kind = "declarative"
    tombstones = True

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self.name = definition.name
        self.fingerprint = definition.fingerprint
        self.on_error = definition.on_error
        self.source = definition.source
        self.types = definition.types

    def build_table(self, table_name: str) -> Table:
        d = self.definition
        return Table(
            table_name,
            MetaData(),
            *(Column(k, Text, primary_key=True) for k in d.key_columns),
            *(Column(c.name, SQL_TYPES[c.type]) for c in d.columns),
            Column("data", JSON),
            Column("version", Text),
            Column("position", BigInteger, nullable=False),
            Column("deleted", Boolean, nullable=False),
        )

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> Outcome:
        wanted = [e for e in events if self.wants(e)]
        keys = keys_of(self.definition, wanted)
        current = self.load(conn, table, {k for k in keys if not isinstance(k, HandlerError)})
        result = fold(self.definition, wanted, current, keys)
        self.write(conn, table, result.rows.values(), current)
        return Outcome([(p, m, None) for p, m in result.errors], result.halted_at)

    def load(
        self, conn: Connection, table: Table, keys: set[tuple[str, ...]]
    ) -> dict[tuple[str, ...], RowState]:
        """The current state of the rows with these keys."""
        d = self.definition
        key_cols = [table.c[k] for k in d.key_columns]
        found: dict[tuple[str, ...], RowState] = {}
        ordered = sorted(keys)
        for i in range(0, len(ordered), KEY_CHUNK):
            chunk = ordered[i : i + KEY_CHUNK]
            # One IN list per key column, then an exact filter here: both databases
            # search the primary key this way, while a row-value IN scans on SQLite.
            conds = [col.in_(sorted({k[n] for k in chunk})) for n, col in enumerate(key_cols)]
            for row in conn.execute(select(table).where(*conds)):
                m = row._mapping
                key = tuple(m[k] for k in d.key_columns)
                if key not in keys:
                    continue
                found[key] = RowState(
                    key=key,
                    columns={c: m[c] for c in d.column_names},
                    data=m["data"],
                    version=m["version"],
                    position=m["position"],
                    deleted=m["deleted"],
                )
        return found

    def write(self, conn, table: Table, rows, current: Mapping[tuple[str, ...], RowState]) -> None:
        """Insert new keys, update known ones: only the winning state of each key is written."""
        d = self.definition
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for row in rows:
            values = {
                **dict(zip(d.key_columns, row.key, strict=True)),
                **row.columns,
                "data": row.data,
                "version": row.version,
                "position": row.position,
                "deleted": row.deleted,
            }
            (updates if row.key in current else inserts).append(values)
        if inserts:
            conn.execute(table.insert(), inserts)
        if updates:
            where = [table.c[k] == bindparam(f"k_{k}") for k in d.key_columns]
            setters = {
                c: bindparam(f"v_{c}")
                for c in (*d.column_names, "data", "version", "position", "deleted")
            }
            conn.execute(
                table.update().where(*where).values(setters),
                [
                    {
                        **{f"k_{k}": u[k] for k in d.key_columns},
                        **{f"v_{c}": u[c] for c in setters},
                    }
                    for u in updates
                ],
            )


class PythonProjector(Projector):
    """Drives a user's `Projection`; finds the failing event of a batch by bisecting to one."""

    kind = "python"

    def __init__(self, name: str, impl: Projection, spec: str, on_error: str) -> None:
        self.name = name
        self.impl = impl
        self.on_error = on_error
        self.source = impl.source
        self.types = tuple(impl.types) if impl.types is not None else None
        self.fingerprint = hashlib.sha256(f"python:{spec}:{impl.version}".encode()).hexdigest()

    def build_table(self, table_name: str) -> Table:
        return self.impl.table(MetaData(), table_name)

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> Outcome:
        wanted = [e for e in events if self.wants(e)]
        if not wanted:
            return Outcome()
        try:
            with conn.begin_nested():
                self.impl.apply(conn, table, wanted)
        except Exception:
            return self._one_by_one(conn, table, wanted)
        return Outcome()

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


def load_projectors(config: Config) -> dict[str, Projector]:
    """Every projection of the config, validated; ConfigError names file and key."""
    where = config.path or "<defaults>"
    out: dict[str, Projector] = {}
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
        if name in RESERVED_NAMES or name.startswith("p_"):
            raise ConfigError(f"{where}: projections.{name}: the name is reserved")
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
            impl = load_class(str(raw["class"]), f"{where}: projections.{name}.class")
            out[name] = PythonProjector(name, impl, str(raw["class"]), on_error)
        else:
            out[name] = DeclarativeProjector(Definition.parse(name, raw, where))
    return out
