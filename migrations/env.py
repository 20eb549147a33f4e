"""Alembic environment: reuses a connection handed in by `ledger.migrate`, else the URL.

The target and the filter (`migrations.target`) cover all of hookledger's own
tables and leave out the engine's projection tables and views.
"""

from alembic import context
from sqlalchemy import create_engine

from migrations.target import TARGET, include_name

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise SystemExit("alembic: set sqlalchemy.url (or run `hookledger migrate`)")
    engine = create_engine(url)
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=TARGET, include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=TARGET,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
