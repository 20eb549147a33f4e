"""Run the ledger's Alembic migrations, and tell whether a database is at head."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from ledger.recorder import translated, writer


def alembic_config(engine: Engine) -> AlembicConfig:
    """An Alembic config pointing at the installed `migrations` package."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """`alembic upgrade <revision>` on this engine's database (safe to repeat)."""
    cfg = alembic_config(engine)
    with translated(), writer(engine.connect()) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


@functools.cache
def _code_head() -> str | None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return ScriptDirectory.from_config(cfg).get_current_head()


def head_revision(engine: Engine | None = None) -> str | None:
    """The newest revision the code knows."""
    return _code_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when never migrated)."""
    with translated(), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: Engine) -> bool:
    """True when the database is migrated to the code's head."""
    return current_revision(engine) == head_revision(engine)
