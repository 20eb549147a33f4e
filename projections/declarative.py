"""Declarative projections: a config table that says what an event means.

`Definition.parse` validates the config; `fold` is the pure heart: given
the current state of the touched rows and a batch of events, it returns the
rows' new state (only the winning change per key reaches the database) and
the events it could not apply.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ledger.errors import ConfigError
from ledger.pointer import MISSING, resolve, tokens
from ledger.pointer import check as pointer_problem
from projections.model import NOT_JSON, Event, HandlerError
from projections.ordering import VersionError, is_newer, version_text

# A row loaded for the ordering guard only: its columns and data stay as stored.
KEPT: Any = type("Kept", (), {"__repr__": lambda self: "KEPT"})()

COLUMN_TYPES = ("text", "integer", "number", "boolean")
INT64 = (-(2**63), 2**63 - 1)
RESERVED_COLUMNS = {"data", "version", "position", "deleted"}
ON_ERROR = ("halt", "skip")


@dataclass(frozen=True)
class ColumnSpec:
    """A typed column extracted from each event's body."""

    name: str
    path: str
    type: str = "text"


@dataclass(frozen=True)
class Definition:
    """A validated declarative projection."""

    name: str
    key: tuple[str, ...]
    key_columns: tuple[str, ...]
    source: str | None = None
    types: tuple[str, ...] | None = None
    object: str = ""
    version: str | None = None
    delete_on: tuple[str, ...] = ()
    columns: tuple[ColumnSpec, ...] = ()
    on_error: str = "halt"
    kind: str = field(default="declarative")

    @property
    def fingerprint(self) -> str:
        """Changes whenever the meaning changes: a new fingerprint builds a new version."""
        doc = asdict(self)
        doc.pop("on_error")
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def to_json(self) -> str:
        """The definition as stored with its version (`projection_versions.definition`)."""
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, text: str) -> Definition:
        """A definition stored by `to_json`, as it was when its version was created."""
        doc = orjson.loads(text)
        for name in ("key", "key_columns", "delete_on", "types"):
            if doc.get(name) is not None:
                doc[name] = tuple(doc[name])
        doc["columns"] = tuple(ColumnSpec(**c) for c in doc["columns"])
        return cls(**doc)

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], where: str) -> Definition:
        """Validate `[projections.NAME]`; errors name `where` (file) and the key."""

        def fail(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{where}: projections.{name}.{key}: {problem}")

        allowed = {
            "source",
            "types",
            "key",
            "object",
            "version",
            "delete_on",
            "columns",
            "on_error",
        }
        for option in raw:
            if option not in allowed:
                raise fail(option, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

        def pointer(key: str, value: Any) -> str:
            if not isinstance(value, str) or (value and not value.startswith("/")):
                raise fail(key, f"expected a JSON Pointer such as '/id', got {value!r}")
            problem = pointer_problem(value)
            if problem:
                raise fail(key, problem)
            return value

        def strings(key: str) -> tuple[str, ...] | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail(key, "expected a list of strings")
            return tuple(value)

        if "key" not in raw:
            raise fail("key", "is required")
        keys = raw["key"] if isinstance(raw["key"], list) else [raw["key"]]
        if not keys:
            raise fail("key", "must name at least one pointer")
        key = tuple(pointer("key", k) for k in keys)
        key_columns = tuple(k.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~") for k in key)
        seen: set[str] = set()
        for col in key_columns:
            if not _identifier(col):
                raise fail("key", f"key column {col!r} is not a plain identifier")
            if col in seen or col in RESERVED_COLUMNS:
                raise fail("key", f"key column {col!r} clashes with another column")
            seen.add(col)

        columns = []
        raw_columns = raw.get("columns", {})
        if not isinstance(raw_columns, dict):
            raise fail("columns", "expected a table of name = pointer or {path, type}")
        for col_name, spec in raw_columns.items():
            if not _identifier(col_name):
                raise fail(f"columns.{col_name}", "column names are letters, digits and _")
            if col_name in seen or col_name in RESERVED_COLUMNS:
                raise fail(f"columns.{col_name}", "clashes with a key or built-in column")
            seen.add(col_name)
            if isinstance(spec, str):
                columns.append(ColumnSpec(col_name, pointer(f"columns.{col_name}", spec)))
                continue
            if not isinstance(spec, dict) or "path" not in spec:
                raise fail(
                    f"columns.{col_name}", "expected a pointer or { path = ..., type = ... }"
                )
            extra = set(spec) - {"path", "type"}
            if extra:
                raise fail(f"columns.{col_name}.{sorted(extra)[0]}", "unknown key")
            col_type = spec.get("type", "text")
            if col_type not in COLUMN_TYPES:
                raise fail(f"columns.{col_name}.type", f"expected one of {', '.join(COLUMN_TYPES)}")
            columns.append(
                ColumnSpec(col_name, pointer(f"columns.{col_name}.path", spec["path"]), col_type)
            )

        source = raw.get("source")
        if source is not None and not isinstance(source, str):
            raise fail("source", "expected a source name")
        version = raw.get("version")
        if version is not None:
            version = pointer("version", version)
        on_error = raw.get("on_error", "halt")
        if on_error not in ON_ERROR:
            raise fail("on_error", "expected 'halt' or 'skip'")
        return cls(
            name=name,
            key=key,
            key_columns=key_columns,
            source=source,
            types=strings("types"),
            object=pointer("object", raw.get("object", "")),
            version=version,
            delete_on=strings("delete_on") or (),
            columns=tuple(columns),
            on_error=on_error,
        )


def _identifier(name: str) -> bool:
    return (
        bool(name)
        and name.isascii()
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c == "_" for c in name)
    )


@dataclass(slots=True)
class RowState:
    """A projection row: key, declared columns, document, version, position, tombstone."""

    key: tuple[str, ...]
    columns: dict[str, Any]
    data: Any
    version: str | None
    position: int
    deleted: bool = False


@dataclass
class FoldResult:
    """The rows to write, the events that failed, and where a halt stopped the batch."""

    rows: dict[tuple[str, ...], RowState]
    errors: list[tuple[int, str]]
    halted_at: int | None = None


def _key_part(value: Any, pointer: str) -> str:
    if value is MISSING or value is None:
        raise HandlerError(f"key {pointer} is missing")
    if isinstance(value, bool | dict | list):
        raise HandlerError(f"key {pointer} must be a string or a number, got {value!r}")
    return str(value)


def _typed(spec: ColumnSpec, value: Any) -> Any:
    if value is MISSING or value is None:
        return None
    if spec.type == "text":
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if "\x00" in text:  # PostgreSQL text cannot hold NUL: an error on both backends
            raise HandlerError(
                f"column {spec.name} ({spec.path}) holds a NUL character, which no backend stores"
            )
        return text
    if spec.type == "integer":
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1]:
            return value  # a BIGINT column, on both backends: wider integers are an error
    elif spec.type == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:  # a float column: SQLite's driver refuses a Python int past 64 bits
                return float(value)
            except OverflowError:
                pass
    elif spec.type == "boolean" and isinstance(value, bool):
        return value
    raise HandlerError(f"column {spec.name} ({spec.path}) expects {spec.type}, got {value!r}")


Getter = Callable[[Any], Any]


def getter(pointer: str) -> Getter:
    """`resolve(doc, pointer)` as a function, with paths through objects taken fast."""
    path = tokens(pointer)
    if not path:
        return lambda doc: doc
    if len(path) == 1:
        (first,) = path

        def one(doc: Any) -> Any:
            if type(doc) is dict:  # what orjson builds; anything else takes the general rules
                return doc.get(first, MISSING)
            return resolve(doc, pointer)

        return one
    if len(path) == 2:
        first, second = path

        def two(doc: Any) -> Any:
            if type(doc) is dict:
                node = doc.get(first, MISSING)
                if type(node) is dict:
                    return node.get(second, MISSING)
                if node is MISSING:
                    return MISSING
            return resolve(doc, pointer)

        return two
    return lambda doc: resolve(doc, pointer)


def typer(spec: ColumnSpec) -> Callable[[Any], Any]:
    """`_typed(spec, value)` as a function, with the value already of the column's type fast."""
    if spec.type == "integer":  # the range is checked on every value

        def typed_integer(value: Any) -> Any:
            if type(value) is int and INT64[0] <= value <= INT64[1]:
                return value
            return _typed(spec, value)

        return typed_integer
    if spec.type == "text":  # NUL is checked on every value

        def typed_text(value: Any) -> Any:
            if type(value) is str and "\x00" not in value:
                return value
            return _typed(spec, value)

        return typed_text
    exact = {"number": float, "boolean": bool}[spec.type]

    def typed(value: Any) -> Any:
        if type(value) is exact:
            return value
        return _typed(spec, value)

    return typed


@dataclass(frozen=True)
class Compiled:
    """A definition's pointers and column types turned into functions, once per definition."""

    keys: tuple[tuple[str, Getter], ...]
    version: Getter | None
    object: Getter
    columns: tuple[tuple[str, Getter, Callable[[Any], Any]], ...]
    empty_columns: tuple[tuple[str, None], ...]
    delete_on: frozenset[str | None]
    types: frozenset[str] | None  # None: every type


@functools.lru_cache(maxsize=256)
def compiled(defn: Definition) -> Compiled:
    return Compiled(
        keys=tuple((p, getter(p)) for p in defn.key),
        version=getter(defn.version) if defn.version is not None else None,
        object=getter(defn.object),
        columns=tuple((c.name, getter(c.path), typer(c)) for c in defn.columns),
        empty_columns=tuple((c.name, None) for c in defn.columns),
        delete_on=frozenset(defn.delete_on),
        types=None if defn.types is None else frozenset(defn.types),
    )


def event_key(defn: Definition, event: Event, c: Compiled | None = None) -> tuple[str, ...]:
    """The row key an event addresses; HandlerError when it has none."""
    doc = event.json()
    if doc is NOT_JSON:
        raise HandlerError("the body is not JSON")
    parts = []
    for pointer, get in (c or compiled(defn)).keys:
        part = get(doc)
        part = part if type(part) is str else _key_part(part, pointer)
        if "\x00" in part:
            raise HandlerError(f"key {pointer} holds a NUL character, which no backend stores")
        parts.append(part)
    return tuple(parts)


def apply_event(
    defn: Definition,
    event: Event,
    key: tuple[str, ...],
    row: RowState | None,
    c: Compiled | None = None,
) -> RowState | None:
    """The row `key` after `event`, or None when the guard says the event is stale.

    A tombstone keeps the row's columns and data (KEPT when the row was loaded
    for the guard only: the database keeps what it has)."""
    if c is None:
        c = compiled(defn)
    doc = event.json()
    version = None
    if c.version is not None:
        raw = c.version(doc)
        if raw is MISSING:
            raise HandlerError(f"version {defn.version} is missing")
        try:
            version = version_text(raw)
        except VersionError as e:
            raise HandlerError(str(e)) from None
    if row is not None:
        try:
            if not is_newer(version, event.position, row.version, row.position):
                return None
        except VersionError as e:
            raise HandlerError(str(e)) from None
    if event.event_type in c.delete_on:
        columns = row.columns if row is not None else dict(c.empty_columns)
        data = row.data if row is not None else None
        return RowState(key, columns, data, version, event.position, True)
    data = c.object(doc)
    if data is MISSING:
        raise HandlerError(f"object {defn.object} is missing")
    columns = {name: typed(get(doc)) for name, get, typed in c.columns}
    return RowState(key, columns, data, version, event.position, False)


def keys_of(defn: Definition, events: Sequence[Event]) -> list[tuple[str, ...] | HandlerError]:
    """Each event's row key, or the HandlerError it raises (computed once per batch)."""
    c = compiled(defn)
    getters = tuple(get for _, get in c.keys)
    out: list[tuple[str, ...] | HandlerError] = []
    append = out.append
    for event in events:
        doc = event.json()
        key = tuple([get(doc) for get in getters])
        # the usual case, decided without a call
        if all(type(part) is str for part in key) and "\x00" not in "".join(key):
            append(key)
            continue
        try:
            append(event_key(defn, event, c))
        except HandlerError as e:
            append(e)
    return out


def fold(
    defn: Definition,
    events: Sequence[Event],
    current: Mapping[tuple[str, ...], RowState],
    keys: Sequence[tuple[str, ...] | HandlerError] | None = None,
) -> FoldResult:
    """Apply `events` in order over `current`; only changed rows are returned.

    `keys`, when given, are `keys_of(defn, events)`."""
    c = compiled(defn)
    changed: dict[tuple[str, ...], RowState] = {}
    errors: list[tuple[int, str]] = []
    if keys is None:
        keys = keys_of(defn, events)
    types = c.types
    for event, key in zip(events, keys, strict=True):
        if event.duplicate_of is not None or (types is not None and event.event_type not in types):
            continue
        try:
            if isinstance(key, HandlerError):
                raise key
            row = changed.get(key) or current.get(key)
            new = apply_event(defn, event, key, row, c)
        except HandlerError as e:
            errors.append((event.position, str(e)))
            if defn.on_error == "halt":
                return FoldResult(changed, errors, halted_at=event.position)
            continue
        if new is not None:
            changed[key] = new
    return FoldResult(changed, errors)
