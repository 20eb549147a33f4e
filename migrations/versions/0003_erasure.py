"""Erasure: a body may be set to NULL (keeping its digest), recorded in `erasures`.

The append-only guard now refuses every UPDATE except one that erases a
body and leaves every other column as it was; DELETE stays refused.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

KEPT = [
    "position",
    "source",
    "received_at_us",
    "event_id",
    "event_type",
    "query",
    "headers",
    "body_sha256",
    "content_type",
    "remote_addr",
    "verification",
    "duplicate_of",
    "hash",
    "secret_index",
]

SQLITE_ERASE_ONLY = (
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events WHEN NOT (NEW.body IS NULL AND "
    + " AND ".join(f"NEW.{c} IS OLD.{c}" for c in KEPT)
    + ") BEGIN SELECT RAISE(ABORT, "
    "'events is append-only: UPDATE refused (only erasing a body is allowed)'); END"
)

POSTGRES_ERASE_ONLY = """CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.body IS NULL
       AND (to_jsonb(NEW) - 'body') = (to_jsonb(OLD) - 'body') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events is append-only: % refused (only erasing a body is allowed)', TG_OP;
END $$"""

POSTGRES_STRICT = """CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP;
END $$"""


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("criteria", sa.Text, nullable=False),
        sa.Column("erased", sa.BigInteger, nullable=False),
        sa.Column("first_position", sa.BigInteger),
        sa.Column("last_position", sa.BigInteger),
        sa.PrimaryKeyConstraint("id", name="pk_erasures"),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER events_no_update")
        op.execute(SQLITE_ERASE_ONLY)
    else:
        op.execute(POSTGRES_ERASE_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER events_no_update")
        op.execute(
            "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
            "BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END"
        )
    else:
        op.execute(POSTGRES_STRICT)
    op.drop_table("erasures")
