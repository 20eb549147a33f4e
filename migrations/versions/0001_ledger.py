"""The ledger: events (append-only, chained), its head row, and rejections.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_GUARDS = [
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE refused'); END",
]

POSTGRES_GUARDS = [
    """CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'events is append-only: % refused', TG_OP;
    END $$""",
    "CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events "
    "FOR EACH ROW EXECUTE FUNCTION events_append_only()",
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
    "FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()",
]


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", RowId, primary_key=True, autoincrement=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("event_type", sa.Text),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("content_type", sa.Text),
        sa.Column("remote_addr", sa.Text),
        sa.Column("verification", sa.Text, nullable=False),
        sa.Column("duplicate_of", sa.BigInteger),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("secret_index", sa.Integer),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
    )
    op.create_index("ix_events_source_event_id", "events", ["source", "event_id"])
    op.create_index("ix_events_source_position", "events", ["source", "position"])
    op.create_index("ix_events_event_type_position", "events", ["event_type", "position"])
    op.create_index("ix_events_received_at_us", "events", ["received_at_us"])

    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_head"),
    )
    op.bulk_insert(head, [{"id": 1, "position": 0, "hash": "0" * 64}])

    op.create_table(
        "rejections",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("remote_addr", sa.Text),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("body_size", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejections"),
    )
    op.create_index("ix_rejections_received_at_us", "rejections", ["received_at_us"])

    guards = SQLITE_GUARDS if op.get_bind().dialect.name == "sqlite" else POSTGRES_GUARDS
    for statement in guards:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER events_no_truncate ON events")
        op.execute("DROP TRIGGER events_no_update ON events")
        op.execute("DROP FUNCTION events_append_only()")
    op.drop_table("rejections")
    op.drop_table("ledger_head")
    op.drop_table("events")
