"""Verification jobs: one at a time per database, progress and last result kept.

Revision ID: 0004_audit
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_audit"
down_revision = "0004_web"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "verifications",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("running", sa.Integer),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("head", sa.BigInteger, nullable=False),
        sa.Column("checked", sa.BigInteger, nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
        sa.Column("finished_at_us", sa.BigInteger),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("requested_by", sa.Text),
        sa.Column("result", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_verifications"),
        sa.UniqueConstraint("running", name="uq_verifications_running"),
    )


def downgrade() -> None:
    op.drop_table("verifications")
