"""Body duplicates without an index write per delivery (`ledger.recorder.body_firsts`).

`ix_events_source_body_sha256` put a random-keyed B-tree insert on every append;
`body_firsts` holds the same first positions, written in sorted chunks, and
`ledger_head.digests_through` says how far it covers the log. Filled here from the
log as it stands.

Revision ID: 0005_body_firsts
Revises: 0004_engine
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_body_firsts"
down_revision = "0004_engine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "body_firsts",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source", "body_sha256", name="pk_body_firsts"),
        sqlite_with_rowid=False,
    )
    op.add_column(
        "ledger_head",
        sa.Column("digests_through", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        "INSERT INTO body_firsts (source, body_sha256, position) "
        "SELECT source, body_sha256, min(position) FROM events GROUP BY source, body_sha256"
    )
    op.execute("UPDATE ledger_head SET digests_through = position")
    op.drop_index("ix_events_source_body_sha256", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_source_body_sha256", "events", ["source", "body_sha256"])
    with op.batch_alter_table("ledger_head") as batch:
        batch.drop_column("digests_through")
    op.drop_table("body_firsts")
