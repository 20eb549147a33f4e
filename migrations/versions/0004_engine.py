"""Each projection version keeps its own definition; retired tables are dropped in steps.

`definition` holds a declarative version's definition (JSON), so the live
version keeps being applied with its own shape while a changed definition
builds beside it. `dropped_at_us` marks a retired or abandoned version whose
table is gone: until then the engine drops it in short steps.

Revision ID: 0004_engine
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_engine"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projection_versions") as batch:
        batch.add_column(sa.Column("definition", sa.Text))
        batch.add_column(sa.Column("dropped_at_us", sa.BigInteger))
    # Until now a retired or abandoned version's table was dropped with the status change.
    op.execute(
        "UPDATE projection_versions SET dropped_at_us = COALESCE(swapped_at_us, created_at_us) "
        "WHERE status IN ('retired', 'abandoned')"
    )


def downgrade() -> None:
    with op.batch_alter_table("projection_versions") as batch:
        batch.drop_column("dropped_at_us")
        batch.drop_column("definition")
