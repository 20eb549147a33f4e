"""Event streams and an independent fold for the projection tests."""

from __future__ import annotations

import orjson
from sqlalchemy import Column, Connection, Integer, MetaData, Table, Text, select, text

from ledger.config import Config
from projections.adapters import load_adapters
from projections.python import Projection
from projections.worker import Worker

ENTITIES = {
    "types": ["data_updated", "data_deleted"],
    "key": ["/entity", "/id"],
    "object": "/data",
    "version": "/version",
    "delete_on": ["data_deleted"],
    "columns": {"name": "/data/name", "n": {"path": "/data/n", "type": "integer"}},
}


def entity_body(kind: str, entity: str, key: str, version: int, **data) -> bytes:
    return orjson.dumps(
        {"event_type": kind, "entity": entity, "id": key, "version": version, "data": data}
    )


def expected_entities(deliveries: list[tuple[str, bytes, bool]]) -> dict[tuple, tuple]:
    """Fold the log with nothing but the SPEC 5 rules: {(entity, id): (version, deleted, data)}.

    `deliveries` are (event_type, body, is_duplicate) in position order."""
    rows: dict[tuple, tuple] = {}
    for position, (kind, body, duplicate) in enumerate(deliveries, start=1):
        if duplicate:
            continue
        doc = orjson.loads(body)
        key = (doc["entity"], doc["id"])
        old = rows.get(key)
        if old is not None and (doc["version"], position) <= (old[0], old[3]):
            continue
        if kind == "data_deleted":
            data = old[2] if old else None
            rows[key] = (doc["version"], True, data, position)
        else:
            rows[key] = (doc["version"], False, doc["data"], position)
    return {k: v[:3] for k, v in rows.items()}


def actual_entities(conn: Connection, view: str = "entities") -> dict[tuple, tuple]:
    rows = conn.execute(text(f"SELECT entity, id, version, deleted, data FROM {view}")).all()
    out = {}
    for entity, key, version, deleted, data in rows:
        if isinstance(data, str):
            data = orjson.loads(data)
        out[(entity, key)] = (int(version), bool(deleted), data)
    return out


def projectors_for(**projections) -> dict:
    return load_adapters(Config(path="test.toml", projections=projections))


def drain(worker: Worker, limit: int = 10_000) -> None:
    """Run passes until nothing is left to do."""
    for _ in range(limit):
        if not worker.run_once():
            return
    raise AssertionError("the worker never went idle")


class EventCounts(Projection):
    """Counts events per type: any repeated or lost effect shows as a wrong count."""

    version = 1

    def table(self, metadata: MetaData, name: str) -> Table:
        return Table(
            name,
            metadata,
            Column("event_type", Text, primary_key=True),
            Column("count", Integer, nullable=False),
        )

    def apply(self, conn: Connection, table: Table, events) -> None:
        counts: dict[str, int] = {}
        for e in events:
            counts[e.event_type or ""] = counts.get(e.event_type or "", 0) + 1
        existing = dict(
            conn.execute(
                select(table.c.event_type, table.c.count).where(table.c.event_type.in_(counts))
            ).all()
        )
        for kind, n in counts.items():
            if kind in existing:
                conn.execute(
                    table.update()
                    .where(table.c.event_type == kind)
                    .values(count=existing[kind] + n)
                )
            else:
                conn.execute(table.insert().values(event_type=kind, count=n))


class Poisoned(Projection):
    """Fails on any event whose body says "poison"."""

    version = 1

    def table(self, metadata: MetaData, name: str) -> Table:
        return Table(name, metadata, Column("position", Integer, primary_key=True))

    def apply(self, conn: Connection, table: Table, events) -> None:
        for e in events:
            if b"poison" in (e.body or b""):
                raise ValueError(f"poisoned event at {e.position}")
            conn.execute(table.insert().values(position=e.position))


def entities_projection(source: str = "app", columns: str = "") -> str:
    """Config text of the generic `entities` projection over `source`.

    `columns` is the TOML value of the projection's `columns` key, if any."""
    text = f"""
[projections.entities]
source = "{source}"
types = ["data_updated", "data_deleted"]
key = ["/entity", "/id"]
object = "/data"
version = "/version"
delete_on = ["data_deleted"]
"""
    return text + (f"columns = {columns}\n" if columns else "")


def entities_toml(columns: str = "") -> str:
    """Config text: the unsigned `app` source and the generic `entities` projection."""
    source = """
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
"""
    return source + entities_projection("app", columns)
