"""The projection registry: versions with checkpoints, leases, handler errors.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "projection_versions",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("build_total", sa.BigInteger),
        sa.Column("build_started_at_us", sa.BigInteger),
        sa.Column("swapped_at_us", sa.BigInteger),
        sa.Column("diff", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("name", "version", name="pk_projection_versions"),
    )
    op.create_table(
        "projection_leases",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projection_leases"),
    )
    op.create_table(
        "projection_errors",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("traceback", sa.Text),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projection_errors"),
    )
    op.create_index(
        "ix_projection_errors_name_version_position",
        "projection_errors",
        ["name", "version", "position"],
    )


def downgrade() -> None:
    op.drop_table("projection_errors")
    op.drop_table("projection_leases")
    op.drop_table("projection_versions")
