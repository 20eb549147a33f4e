"""Which projector applies to a version: the definition it was built with, or none.

A definition change builds a new version beside the live one. Until the swap
the live version keeps being applied with its own definition, stored with it
(`projection_versions.definition`), so it keeps its shape and keeps serving
fresh reads. A Python projection's old code is gone: its live version is
applied with today's code only while today's table has the old table's shape,
and otherwise stops advancing (it keeps serving what it has) until the swap.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import Connection, Row, Table
from sqlalchemy import exc as sa_exc

from projections.adapters import Adapter, DeclarativeAdapter
from projections.declarative import Definition
from projections.swap import reflect


def own_projector(conn: Connection, row: Row, current: Adapter) -> Adapter | None:
    """The projector to apply to version `row`; None when it can no longer be applied."""
    if row.fingerprint == current.fingerprint:
        return current
    if row.kind == "declarative" and row.definition is not None:
        definition = dataclasses.replace(
            Definition.from_json(row.definition), on_error=current.on_error
        )
        if definition.fingerprint == row.fingerprint:
            return DeclarativeAdapter(definition)
        return None
    if row.kind == "python" and current.kind == "python":
        try:
            stored = reflect(conn, row.table_name)
        except sa_exc.NoSuchTableError:
            return None
        if same_shape(conn, stored, current.build_table(row.table_name)):
            return current
    return None


def same_shape(conn: Connection, a: Table, b: Table) -> bool:
    """Same column names and types, same primary key, as this database spells them."""

    def shape(t: Table) -> tuple:
        return (
            sorted((c.name, str(c.type.compile(conn.dialect)).upper()) for c in t.columns),
            sorted(c.name for c in t.primary_key.columns),
        )

    try:
        return shape(a) == shape(b)
    except Exception:  # a type this dialect cannot spell: treat as different
        return False
