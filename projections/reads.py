"""Reading a projection's current state: filters, sort, keyset cursors.

Reads go through the projection's SQL view, so a swap in progress is
invisible to them. Every value is a bound parameter; every identifier is
checked against the live version's columns before it reaches SQL.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    Row,
    Table,
    and_,
    or_,
    select,
    tuple_,
)
from sqlalchemy.exc import NoSuchTableError

from ledger.errors import RETRY, HookledgerError
from projections import versions


class QueryError(HookledgerError, ValueError):
    """A request the rows API must refuse with 400; the message says why."""

    status, code = 400, "bad_request"


class ChangesNotSupported(QueryError):
    """The changes feed needs an integer `position` column, which a Python projection's
    own table may not have."""

    code = "changes_not_supported"


class NotBuilt(HookledgerError, LookupError):
    """The projection has no live version yet: its first build is running."""

    status, code = 503, "projection_building"
    headers: Mapping[str, str] | None = RETRY


class BuildFailed(NotBuilt):
    """The projection has no live version: its first build halted (no use retrying soon)."""

    status, code, headers = 503, "projection_failed", None


@dataclass(frozen=True)
class LiveView:
    """The live version of a projection, as a queryable table named after its view."""

    name: str
    version: int
    position: int
    table: Table
    key_columns: tuple[str, ...]

    @property
    def tombstones(self) -> bool:
        return "deleted" in self.table.c


def _not_built(conn: Connection, name: str) -> NotBuilt:
    """Why `name` has no live version: its first build halted, or it is still running."""
    _, building = versions.active(conn, name)
    if building is not None and building.state == "failed":
        return BuildFailed(
            f"{name} has no live version: its first build halted ({building.last_error}); "
            f"fix the cause, then `hookledger projections retry {name}`"
        )
    return NotBuilt(f"{name} has no live version yet: its first build is running")


def live_view(conn: Connection, name: str) -> LiveView:
    """Reflect the live version (its columns may predate the current definition)."""
    # On PostgreSQL each statement sees the commits made before it, so a swap may drop the
    # version's table while it is reflected (an error, or a table without its primary key).
    # The swap moves the registry in the same transaction: if the registry still names the
    # same version after the reflection, the reflection saw the whole table.
    live, _ = versions.active(conn, name)
    if live is None:
        raise _not_built(conn, name)
    cached = _LAYOUTS.get(_layout_key(conn, live))
    if cached is not None:  # a version's columns never change: reflect each version once
        view, keys = cached
        return LiveView(name, live.version, live.position, view, keys)
    for _ in range(5):
        live, _ = versions.active(conn, name)
        if live is None:
            raise _not_built(conn, name)
        with contextlib.suppress(NoSuchTableError):
            physical = Table(live.table_name, MetaData(), autoload_with=conn)
            again, _ = versions.active(conn, name)
            if again is not None and again.version == live.version:
                break
    else:
        raise _not_built(conn, name)  # swapping again and again: the caller answers "retry"
    view = Table(
        name,
        MetaData(),
        *(
            Column(c.name, JSON if c.name == "data" else c.type, primary_key=c.primary_key)
            for c in physical.columns
        ),
    )
    keys = tuple(c.name for c in physical.primary_key.columns)
    if len(_LAYOUTS) > 1000:
        _LAYOUTS.clear()
    _LAYOUTS[_layout_key(conn, live)] = (view, keys)
    return LiveView(name, live.version, live.position, view, keys)


# Reflected layouts by (database, table of a version); tables are never altered in place.
_LAYOUTS: dict[tuple[str, str, int], tuple[Table, tuple[str, ...]]] = {}


def _layout_key(conn: Connection, live: Row) -> tuple[str, str, int]:
    return (str(conn.engine.url), live.table_name, live.created_at_us)


def coerce(column: Column, raw: str) -> Any:
    """A filter value typed like its column (integers compare as integers)."""
    kind = column.type
    try:
        if isinstance(kind, Boolean):
            if raw.lower() in ("true", "1"):
                return True
            if raw.lower() in ("false", "0"):
                return False
            raise ValueError(raw)
        if isinstance(kind, Integer | BigInteger):
            value = int(raw)
            if not -(2**63) <= value < 2**63:
                raise ValueError(raw)  # the database would refuse it with an error, not a 400
            return value
        if isinstance(kind, Float):
            return float(raw)
    except ValueError:
        raise QueryError(f"{column.name} expects {_type_word(column)}, got {raw!r}") from None
    if isinstance(kind, JSON):
        raise QueryError(f"{column.name} cannot be filtered on (it is a JSON document)")
    return raw


def _type_word(column: Column) -> str:
    if isinstance(column.type, Boolean):
        return "true or false"
    if isinstance(column.type, Integer | BigInteger):
        return "an integer"
    return "a number"


def encode_cursor(sort: str, row: Mapping[str, Any], view: LiveView) -> str:
    sort_col = sort.lstrip("-")
    doc = {
        "s": sort,
        "v": row[sort_col] if sort_col else None,
        "k": [row[k] for k in view.key_columns],
    }
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, view: LiveView) -> tuple[Any, list[Any]]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        doc = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise QueryError("cursor is malformed") from None
    if (
        not isinstance(doc, dict)
        or doc.get("s") != sort
        or not isinstance(doc.get("k"), list)
        or len(doc["k"]) != len(view.key_columns)
        or not all(isinstance(k, str | int | float) and not isinstance(k, bool) for k in doc["k"])
        or isinstance(doc.get("v"), dict | list)
    ):
        raise QueryError("cursor is malformed or belongs to another sort order")
    return doc.get("v"), doc["k"]


def _cursor_value(column: Column, value: Any) -> Any:
    """A value from a cursor, typed like its column (a tampered one is a malformed cursor)."""
    if value is None:
        raise QueryError("cursor is malformed")
    try:
        return coerce(column, value if isinstance(value, str) else str(value))
    except QueryError:
        raise QueryError("cursor is malformed or belongs to another sort order") from None


def select_rows(
    conn: Connection,
    view: LiveView,
    filters: Mapping[str, str],
    sort: str = "",
    limit: int = 100,
    cursor: str | None = None,
    include_deleted: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of rows and the cursor of the next page (None at the end)."""
    t = view.table
    where = []
    for name, raw in filters.items():
        if name not in t.c:
            raise QueryError(f"unknown column {name!r} (columns: {', '.join(t.c.keys())})")
        where.append(t.c[name] == coerce(t.c[name], raw))
    if view.tombstones and not include_deleted:
        where.append(t.c.deleted.is_(False))
    sort_name = sort.lstrip("-")
    descending = sort.startswith("-")
    if sort_name and sort_name not in t.c:
        raise QueryError(f"cannot sort on unknown column {sort_name!r}")
    if sort_name and isinstance(t.c[sort_name].type, JSON):
        raise QueryError(f"cannot sort on {sort_name!r} (it is a JSON document)")
    keys = [t.c[k] for k in view.key_columns]
    key_tuple = keys[0] if len(keys) == 1 else tuple_(*keys)
    # sorting on the first key column is the key order; any other column (a later key
    # column included) sorts first, with the key as the tie-break
    by_column = bool(sort_name) and sort_name != view.key_columns[0]
    order = []
    if by_column:
        col = t.c[sort_name]
        order.append(col.desc().nulls_last() if descending else col.asc().nulls_first())
    order += [k.desc() if descending else k.asc() for k in keys]
    if cursor:
        value, last_keys = decode_cursor(cursor, sort, view)
        last_keys = [_cursor_value(k, v) for k, v in zip(keys, last_keys, strict=True)]
        last_key = last_keys[0] if len(keys) == 1 else tuple_(*last_keys)
        after_keys = key_tuple < last_key if descending else key_tuple > last_key
        if by_column:
            col = t.c[sort_name]
            if value is None:
                where.append(
                    and_(col.is_(None), after_keys)
                    if descending
                    else or_(and_(col.is_(None), after_keys), col.is_not(None))
                )
            else:
                value = _cursor_value(col, value)
                beyond = col < value if descending else col > value
                tie = and_(col == value, after_keys)
                where.append(or_(beyond, tie, col.is_(None)) if descending else or_(beyond, tie))
        else:
            where.append(after_keys)
    query = select(t).where(*where).order_by(*order).limit(limit + 1)
    rows = [dict(r._mapping) for r in conn.execute(query)]
    nxt = encode_cursor(sort, rows[limit - 1], view) if len(rows) > limit else None
    return rows[:limit], nxt


def get_row(conn: Connection, view: LiveView, key: str) -> dict[str, Any] | None:
    """One row by its key; composite keys are joined with '/'."""
    parts = key.split("/", len(view.key_columns) - 1) if len(view.key_columns) > 1 else [key]
    if len(parts) != len(view.key_columns):
        raise QueryError(
            f"expected {len(view.key_columns)} key parts ({'/'.join(view.key_columns)}), got {key!r}"
        )
    t = view.table
    row: Row | None = conn.execute(
        select(t).where(
            *(t.c[k] == coerce(t.c[k], v) for k, v in zip(view.key_columns, parts, strict=True))
        )
    ).first()
    return None if row is None else dict(row._mapping)


def select_changes(
    conn: Connection, view: LiveView, after: int, limit: int
) -> list[dict[str, Any]]:
    """The rows whose `position` is above `after`, tombstones included, in position order
    (then the key): the changes feed, whose next `after` is the last row's position.

    A declarative projection's rows never share a position (each event writes one row).
    A Python projection's may: a page then never ends inside a position, so that the
    next `after` skips none of them. It ends before it, or, when one position fills the
    page, holds every row of that position (more than `limit`)."""
    t = view.table
    if "position" not in t.c or not isinstance(t.c.position.type, Integer):
        raise ChangesNotSupported(
            f"{view.name} has no integer `position` column, so it has no changes feed "
            "(a Python projection's table gets one by adding it, set to the position of "
            "the event that last changed the row)"
        )
    position = t.c.position
    # The order of the index on (position, key...) of a declarative projection.
    keys = [t.c[k].asc() for k in view.key_columns if k != "position"]
    query = select(t).where(position > after).order_by(position.asc().nulls_first(), *keys)
    rows = [dict(r._mapping) for r in conn.execute(query.limit(limit + 1))]
    if len(rows) <= limit or rows[limit]["position"] != rows[limit - 1]["position"]:
        return rows[:limit]
    shared = rows[limit]["position"]
    before = [r for r in rows[:limit] if r["position"] != shared]
    if before:
        return before
    return [dict(r._mapping) for r in conn.execute(query.where(position == shared))]
