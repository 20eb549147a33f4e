"""Row counts in the registry: `projection_versions.row_count`, kept by the engine.

`status`, `/metrics` and `GET /v1/projections` read it instead of counting a
projection's table on every call. Versions that still have a table are counted
once here (tombstones excluded, as `rows` always reported them).

Revision ID: 0004_counts
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_counts"
down_revision = "0004_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projection_versions") as batch:
        batch.add_column(
            sa.Column("row_count", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )
    conn = op.get_bind()
    present = set(sa.inspect(conn).get_table_names())
    versions = conn.execute(
        sa.text(
            "SELECT name, version, kind, table_name FROM projection_versions "
            "WHERE status IN ('building', 'live')"
        )
    ).all()
    for name, version, kind, table_name in versions:
        if table_name not in present:
            continue
        quoted = conn.dialect.identifier_preparer.quote(table_name)
        where = " WHERE deleted = false" if kind == "declarative" else ""
        rows = conn.execute(sa.text(f"SELECT count(*) FROM {quoted}{where}")).scalar()
        conn.execute(
            sa.text(
                "UPDATE projection_versions SET row_count = :rows "
                "WHERE name = :name AND version = :version"
            ),
            {"rows": rows, "name": name, "version": version},
        )


def downgrade() -> None:
    with op.batch_alter_table("projection_versions") as batch:
        batch.drop_column("row_count")
