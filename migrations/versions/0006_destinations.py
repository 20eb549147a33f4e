"""Destinations: checkpoints, leases, the window above each checkpoint, attempts, dead letters.

Revision ID: 0006_destinations
Revises: 0005_body_firsts
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_destinations"
down_revision = "0005_body_firsts"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "destinations",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("notices", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("round_generation", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("failed_position", sa.BigInteger),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("delivered", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("failed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("dead", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("name", name="pk_destinations"),
    )
    op.create_table(
        "destination_leases",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_destination_leases"),
    )
    op.create_table(
        "destination_window",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_at_us", sa.BigInteger),
        sa.PrimaryKeyConstraint("name", "position", name="pk_destination_window"),
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", RowId, nullable=False, autoincrement=True),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("started_at_us", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("duration_us", sa.BigInteger, nullable=False),
        sa.Column("response", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_attempts"),
    )
    op.create_index(
        "ix_delivery_attempts_destination_id", "delivery_attempts", ["destination", "id"]
    )
    op.create_index(
        "ix_delivery_attempts_destination_position_id",
        "delivery_attempts",
        ["destination", "position", "id"],
    )
    op.create_table(
        "dead_letters",
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("attempt_id", sa.BigInteger),
        sa.PrimaryKeyConstraint("destination", "position", name="pk_dead_letters"),
    )


def downgrade() -> None:
    for table in (
        "dead_letters",
        "delivery_attempts",
        "destination_window",
        "destination_leases",
        "destinations",
    ):
        op.drop_table(table)
