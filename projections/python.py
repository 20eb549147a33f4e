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

Registered from the config as `[projections.counts] class = "module:EventCounts"`. The
config file's folder is on the import path (after every other entry), so a module
beside the config file imports without PYTHONPATH. The version's fingerprint includes
the module's source file: editing the code builds a new version when workers restart.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def import_object(spec: str, where: str, folder: str | None = None, what: str = "Class") -> Any:
    """The object `module:Name` names; ConfigError naming `where` otherwise.

    `folder` (the config file's) is appended to `sys.path` first: appended, not put
    in front, so a file there cannot shadow the standard library or hookledger itself."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{where}: expected 'module:{what}', got {spec!r}")
    if folder is not None and folder not in sys.path:
        sys.path.append(folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {e}") from None
    return getattr(module, attr, None)


def load_class(spec: str, where: str, folder: str | None = None) -> Projection:
    """Import `module:Class`, instantiate and check it; ConfigError naming `where` otherwise."""
    cls = import_object(spec, where, folder)
    if not isinstance(cls, type) or not issubclass(cls, Projection):
        raise ConfigError(f"{where}: {spec!r} is not a projections.python.Projection subclass")
    impl = cls()
    check(impl, f"{where}: {spec}")
    return impl


def check(impl: Projection, where: str) -> None:
    """Refuse what would fail later, at every batch or swap: a string for `types`, a
    `source` that is not a string, a table without a primary key or with another name."""
    if impl.types is not None and (
        isinstance(impl.types, str | bytes)
        or not isinstance(impl.types, Sequence)
        or not all(isinstance(t, str) for t in impl.types)
    ):
        raise ConfigError(
            f"{where}: types must be a list of event types, such as [{impl.types!r}], "
            f"or None for every type; got {impl.types!r}"
        )
    if impl.source is not None and not isinstance(impl.source, str):
        raise ConfigError(f"{where}: source must be a source name or None, got {impl.source!r}")
    probe = "p_check_v1"
    try:
        table = impl.table(MetaData(), probe)
    except Exception as e:
        raise ConfigError(f"{where}: table() failed: {type(e).__name__}: {e}") from None
    if not isinstance(table, Table) or table.name != probe:
        raise ConfigError(f"{where}: table(metadata, name) must return a Table named `name`")
    if not table.primary_key.columns:
        raise ConfigError(
            f"{where}: table {probe!r} has no primary key (the engine compares versions by it)"
        )


def source_file(impl: Projection) -> str | None:
    """The source file of the module defining `impl`'s class, when it has one."""
    try:
        return inspect.getsourcefile(type(impl))
    except TypeError:  # built in, or defined where no file is known
        return None


def file_digest(path: str | None) -> str:
    """SHA-256 of a file's bytes as it is now ("" when there is none or it cannot be read)."""
    if path is None:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""
