"""Console sessions kept on the server, so signing out ends them everywhere.

Revision ID: 0004_web
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_web"
down_revision = "0004_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("sid_sha256", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("sid_sha256", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_expires_at_us", "console_sessions", ["expires_at_us"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_expires_at_us", "console_sessions")
    op.drop_table("console_sessions")
