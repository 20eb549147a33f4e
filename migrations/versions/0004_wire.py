"""Bounded rejections: a stored size per row, a running total, persisted counts.

`rejections_max_bytes` bounds the table by the running total in
`rejection_usage` (never a SUM per insert); `rejection_counts` keeps the
count of refusals per source and reason whatever the bound removed.

Revision ID: 0004_wire
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_wire"
down_revision = "0003"
branch_labels = None
depends_on = None

# Bytes, not characters, of the headers' JSON text and the stored body.
SIZE_SQL = {
    "sqlite": "length(CAST(headers AS BLOB)) + length(body)",
    "postgresql": "octet_length(headers) + octet_length(body)",
}


def upgrade() -> None:
    op.add_column(
        "rejections",
        sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute(f"UPDATE rejections SET stored_bytes = {SIZE_SQL[op.get_bind().dialect.name]}")
    op.create_table(
        "rejection_usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("evicted", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejection_usage"),
    )
    op.execute(
        "INSERT INTO rejection_usage (id, bytes, rows, evicted) "
        "SELECT 1, COALESCE(SUM(stored_bytes), 0), COUNT(*), 0 FROM rejections"
    )
    op.create_table(
        "rejection_counts",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("unrecorded", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source", "reason", name="pk_rejection_counts"),
    )
    op.execute(
        "INSERT INTO rejection_counts (source, reason, refused, unrecorded) "
        "SELECT source, reason, COUNT(*), 0 FROM rejections GROUP BY source, reason"
    )


def downgrade() -> None:
    op.drop_table("rejection_counts")
    op.drop_table("rejection_usage")
    op.drop_column("rejections", "stored_bytes")
