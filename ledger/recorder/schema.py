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
    # How far `body_firsts` covers the log (`ledger.recorder.body_firsts`).
    Column("digests_through", BigInteger, nullable=False, server_default="0"),
)

# The first position of each (source, body digest) among the events up to
# `ledger_head.digests_through`: the duplicate lookup by body (SPEC 3), filled in
# sorted chunks by `ledger.recorder.body_firsts.merge` rather than a row per delivery.
body_firsts = Table(
    "body_firsts",
    metadata,
    Column("source", Text, primary_key=True),
    Column("body_sha256", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# Events per source, kept by every writer in its transaction (one UPSERT a batch), so
# `GET /v1/ledger` never counts the log. Erasing bodies deletes no event: no change.
source_counts = Table(
    "source_counts",
    metadata,
    Column("source", Text, primary_key=True),
    Column("events", BigInteger, nullable=False),
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
    # Headers plus the body as stored: what `rejections_max_bytes` bounds.
    Column("stored_bytes", BigInteger, nullable=False, server_default="0"),
    Index(None, "received_at_us"),
)

# One row (id = 1): the running total of `rejections.stored_bytes` and rows, so the
# bound is kept without summing the table, and how many rows the bound removed.
# Every writer of `rejections` locks it first.
rejection_usage = Table(
    "rejection_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bytes", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("evicted", BigInteger, nullable=False),
)

# Refusals ever counted, per source and reason, whatever was later removed: `refused`
# counts every one, `unrecorded` those never stored because the writer was saturated.
rejection_counts = Table(
    "rejection_counts",
    metadata,
    Column("source", Text, primary_key=True),
    Column("reason", Text, primary_key=True),
    Column("refused", BigInteger, nullable=False),
    Column("unrecorded", BigInteger, nullable=False),
)

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

# Console sign-ins (api/console/session.py). The cookie carries a random session id
# whose SHA-256 is the key here; the token is named by its SHA-256, so a session's
# scopes come from the configured token itself, and a token removed or changed in the
# config ends its sessions. Signing out deletes the row, in every process at once.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("sid_sha256", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Index(None, "expires_at_us"),
)


# One row per verification (`ledger.verify_job`): the running one's progress, then its
# result. `running` is 1 while it runs and NULL after; being unique, it lets one run at a
# time per database, whatever the number of processes.
verifications = Table(
    "verifications",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("running", Integer, unique=True),
    Column("state", Text, nullable=False),  # running, finished, failed, abandoned
    Column("start", BigInteger, nullable=False),
    Column("head", BigInteger, nullable=False),
    Column("checked", BigInteger, nullable=False),
    Column("started_at_us", BigInteger, nullable=False),
    Column("heartbeat_us", BigInteger, nullable=False),
    Column("finished_at_us", BigInteger),
    Column("owner", Text, nullable=False),
    Column("requested_by", Text),
    Column("result", Text),  # JSON: the verdict, or {"error": ...}
)


def own_names() -> frozenset[str]:
    """Names hookledger's migrations give tables and indexes (plus Alembic's own table)."""
    names = {"alembic_version"}
    for meta in OWN_METADATA:
        for table in meta.tables.values():
            names.add(table.name)
            names.update(str(index.name) for index in table.indexes if index.name)
    return frozenset(names)
