"""Body deduplication and kept source counts (issue 13, item 3 and `GET /v1/ledger`).

- `ix_events_source_body_sha256`: the duplicate lookup by body digest, run by every
  append batch of a source whose verifier signs only the body;
- `source_counts`: events per source, updated by every writer in its transaction,
  filled here once from the log as it stands.

Revision ID: 0004_ingest
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_ingest"
down_revision = "0004_wire"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_source_body_sha256", "events", ["source", "body_sha256"])
    op.create_table(
        "source_counts",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_source_counts"),
    )
    op.execute(
        "INSERT INTO source_counts (source, events) "
        "SELECT source, count(*) FROM events GROUP BY source"
    )


def downgrade() -> None:
    op.drop_table("source_counts")
    op.drop_index("ix_events_source_body_sha256", table_name="events")
