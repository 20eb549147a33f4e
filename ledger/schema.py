"""The ledger's own tables, as SQLAlchemy Core metadata.

`migrations/` creates them; this module is how the code names them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Every MetaData whose tables hookledger's migrations create: this one, and the projection
# registry's (`projections.schema` adds it, keeping the imports one way).
OWN_METADATA: list[MetaData] = [metadata]

# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index to maintain.
RowId = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("position", RowId, primary_key=True, autoincrement=False),
    Column("source", Text, nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Column("event_id", Text),
    Column("event_type", Text),
    Column("query", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary),
    Column("body_sha256", String(64), nullable=False),
    Column("content_type", Text),
    Column("remote_addr", Text),
    Column("verification", Text, nullable=False),
    Column("duplicate_of", BigInteger),
    Column("hash", String(64), nullable=False),
    # Outside the chain: which of the source's secrets matched (rotation).
    Column("secret_index", Integer),
    Index(None, "source", "event_id"),
    Index(None, "source", "position"),
    Index(None, "event_type", "position"),
    Index(None, "received_at_us"),
)

# One row (id = 1): the last position and hash. Writers lock it per batch,
# which makes positions gap-free and in commit order across processes.
ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("received_at_us", BigInteger, nullable=False),
    Column("source", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text),
    Column("remote_addr", Text),
    Column("query", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("body_size", BigInteger, nullable=False),
    Index(None, "received_at_us"),
)

REJECTION_BODY_BYTES = 64 * 1024

# Who erased which bodies, when and why (retention, a person's right to erasure).
erasures = Table(
    "erasures",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text),
    Column("criteria", Text, nullable=False),
    Column("erased", BigInteger, nullable=False),
    Column("first_position", BigInteger),
    Column("last_position", BigInteger),
)


def own_names() -> frozenset[str]:
    """Names hookledger's migrations give tables and indexes (plus Alembic's own table)."""
    names = {"alembic_version"}
    for meta in OWN_METADATA:
        for table in meta.tables.values():
            names.add(table.name)
            names.update(str(index.name) for index in table.indexes if index.name)
    return frozenset(names)
