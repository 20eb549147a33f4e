"""The projection registry's tables; the projections' own tables are built per version."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, Table, Text, text

from ledger.recorder.schema import NAMING, OWN_METADATA, RowId

metadata = MetaData(naming_convention=NAMING)
OWN_METADATA.append(metadata)

# One row per built or building version of each projection.
#   status: building -> live -> retired (or abandoned, when a newer build replaced it)
#   state:  running | failed (halted on a handler error until `projections retry`)
#   row_count: the version's rows, tombstones excluded, moved in each batch's transaction
#   definition: a declarative version's own definition (JSON), applied until it is retired
#   dropped_at_us: when a retired or abandoned version's table was gone (dropped in steps)
projection_versions = Table(
    "projection_versions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("kind", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("reason", Text),
    Column("created_at_us", BigInteger, nullable=False),
    Column("build_total", BigInteger),
    Column("build_started_at_us", BigInteger),
    Column("swapped_at_us", BigInteger),
    Column("diff", Text),
    Column("last_error", Text),
    Column("row_count", BigInteger, nullable=False, server_default=text("0")),
    Column("definition", Text),
    Column("dropped_at_us", BigInteger),
)

# Who works a projection: one holder at a time, taken over when `expires_at_us` passes.
projection_leases = Table(
    "projection_leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
)

projection_errors = Table(
    "projection_errors",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("error", Text, nullable=False),
    Column("traceback", Text),
    Column("at_us", BigInteger, nullable=False),
    Index(None, "name", "version", "position"),
)
