"""Python projections: a small class with a version, its table and an apply function.

    from sqlalchemy import Column, Integer, MetaData, Table, Text
    from projections.python import Projection

    class EventCounts(Projection):
        version = 1

        def table(self, metadata: MetaData, name: str) -> Table:
            return Table(name, metadata, Column("event_type", Text, primary_key=True),
                         Column("count", Integer, nullable=False))

        def apply(self, conn, table, events) -> None:
            ...  # write to `table` with `conn`; the engine commits with the checkpoint

Registered from the config as `[projections.counts] class = "module:EventCounts"`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from sqlalchemy import Connection, MetaData, Table

from ledger.errors import ConfigError
from projections.model import Event


class Projection:
    """Base class of Python projections; bump `version` to rebuild after a change."""

    version: int = 1
    source: str | None = None
    types: Sequence[str] | None = None

    def table(self, metadata: MetaData, name: str) -> Table:
        """The projection's table, named `name` (one physical table per version)."""
        raise NotImplementedError

    def apply(self, conn: Connection, table: Table, events: Sequence[Event]) -> None:
        """Apply a batch of events (duplicates already removed) inside the engine's transaction."""
        raise NotImplementedError


def load_class(spec: str, where: str) -> Projection:
    """Import `module:Class` and instantiate it; ConfigError naming `where` otherwise."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{where}: expected 'module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {e}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Projection):
        raise ConfigError(f"{where}: {spec!r} is not a projections.python.Projection subclass")
    return cls()
