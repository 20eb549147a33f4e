"""Rebuild a declarative projection over N generated events, next to a hand-written loop.

All run on the same database in the same run: the hand loop reads every
body in position order, parses it with orjson and upserts its object by key,
event by event, in large transactions (what a careful engineer would write
by hand); hookledger's `rebuild` does the same work through the engine; and
the database's own speed, the ceiling, does it with no Python per event: one
set-based INSERT ... SELECT per batch that extracts the fields from the JSON
bodies itself. Each runs in its own process so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, text

from ledger import chain, migrate
from ledger.config import Config, SourceConfig
from ledger.recorder import body_firsts, make_engine, writer
from ledger.recorder.schema import events, ledger_head

KEYS = 100_000
CHUNK = 10_000
PROJECTION = {
    "source": "app",
    "types": ["data_updated", "data_deleted"],
    "key": ["/entity", "/id"],
    "object": "/data",
    "version": "/version",
    "delete_on": ["data_deleted"],
    "columns": {"name": "/data/name", "n": {"path": "/data/n", "type": "integer"}},
}
PAD = "x" * 900  # ~1 KiB bodies


def body(i: int) -> bytes:
    kind = "data_deleted" if i % 50 == 49 else "data_updated"
    key = (i * 7919) % KEYS
    doc = {
        "event_type": kind,
        "entity": "customer",
        "id": str(key),
        "version": i // KEYS + 1,
        "data": {"name": f"customer {key}", "n": i, "pad": PAD},
    }
    return orjson.dumps(doc)


def generate(url: str, count: int) -> None:
    """Write `count` chained events straight into the log (as import would)."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    previous = chain.GENESIS
    headers = '[["content-type","application/json"]]'
    start = time.time_ns() // 1000
    with writer(engine.connect()) as conn:
        for first in range(0, count, CHUNK):
            rows = []
            for i in range(first, min(first + CHUNK, count)):
                b = body(i)
                digest = hashlib.sha256(b).digest()
                kind = "data_deleted" if i % 50 == 49 else "data_updated"
                position = i + 1
                previous = chain.link(
                    previous,
                    chain.record(position, start + i, "app", None, kind, "", headers, digest),
                )
                rows.append(
                    {
                        "position": position,
                        "source": "app",
                        "received_at_us": start + i,
                        "event_id": None,
                        "event_type": kind,
                        "query": "",
                        "headers": headers,
                        "body": b,
                        "body_sha256": digest.hex(),
                        "content_type": "application/json",
                        "remote_addr": None,
                        "verification": "unverified",
                        "duplicate_of": None,
                        "hash": previous.hex(),
                        "secret_index": None,
                    }
                )
            with conn.begin():
                conn.execute(events.insert(), rows)
        with conn.begin():
            conn.execute(ledger_head.update().values(position=count, hash=previous.hex()))
            body_firsts.catch_up(conn)
    engine.dispose()


TABLE = (
    "CREATE TABLE {name} (entity TEXT, id TEXT, name TEXT, n BIGINT, data TEXT, "
    "version TEXT, position BIGINT, deleted BOOLEAN, PRIMARY KEY (entity, id))"
)
UPDATE_ALL = (
    "ON CONFLICT (entity, id) DO UPDATE SET name = excluded.name, n = excluded.n, "
    "data = excluded.data, version = excluded.version, position = excluded.position, "
    "deleted = excluded.deleted"
)
# The ceiling's statement per dialect: the JSON taken apart by the database itself.
SET_BASED = {
    "sqlite": (
        "INSERT INTO sql_entities SELECT json_extract(body, '$.entity'), "
        "json_extract(body, '$.id'), json_extract(body, '$.data.name'), "
        "json_extract(body, '$.data.n'), json_extract(body, '$.data'), "
        "CAST(json_extract(body, '$.version') AS TEXT), position, "
        "event_type = 'data_deleted' FROM events WHERE position > ? AND position <= ? "
        f"ORDER BY position {UPDATE_ALL}"
    ),
    # One change per key and statement (PostgreSQL refuses to update a row twice):
    # the last of each key in the batch, as a fold would.
    "postgresql": (
        "INSERT INTO sql_entities SELECT DISTINCT ON (d->>'entity', d->>'id') "
        "d->>'entity', d->>'id', d->'data'->>'name', (d->'data'->>'n')::bigint, "
        "data::text, d->>'version', position, event_type = 'data_deleted' "
        "FROM (SELECT position, event_type, convert_from(body, 'UTF8')::jsonb AS d, "
        # the object's text as sent (jsonb would respace and reorder it)
        "convert_from(body, 'UTF8')::json -> 'data' AS data "
        "FROM events WHERE position > %s AND position <= %s) AS e "
        f"ORDER BY d->>'entity', d->>'id', position DESC {UPDATE_ALL}"
    ),
}


def _driver(conn: Connection) -> Any:
    """The DB-API connection under `conn` (sqlite3 or psycopg): the hand loops use
    only what both have."""
    return conn.connection.dbapi_connection


def set_based(url: str) -> dict:
    """The ceiling: per 10k-event transaction, one INSERT ... SELECT that extracts every
    field from the bodies in the database (no guard, no tombstones, no errors)."""
    engine = make_engine(url)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS sql_entities"))
        conn.execute(text(TABLE.format(name="sql_entities")))
        head = conn.execute(text("SELECT max(position) FROM events")).scalar() or 0
    statement = SET_BASED[dialect]
    started = time.perf_counter()
    with writer(engine.connect()) as conn:
        cursor = _driver(conn).cursor()
        for after in range(0, head, CHUNK):
            with conn.begin():
                cursor.execute(statement, (after, min(after + CHUNK, head)))
        cursor.close()
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"events": head, "seconds": seconds, "dialect": dialect}


def hand_loop(url: str) -> dict:
    """Read, parse, upsert event by event in 10k-event transactions, on the bare driver.

    What a careful engineer writes by hand: the driver's cursor (no SQLAlchemy per
    row), one prepared-shape INSERT ... ON CONFLICT per event, orjson."""
    engine = make_engine(url)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS hand_entities"))
        conn.execute(text(TABLE.format(name="hand_entities")))
    mark = "?" if dialect == "sqlite" else "%s"
    upsert = f"INSERT INTO hand_entities VALUES ({', '.join([mark] * 8)}) {UPDATE_ALL}"
    select = (
        "SELECT position, event_type, body FROM events WHERE position > "
        f"{mark} ORDER BY position LIMIT {mark}"
    )
    loads, dumps = orjson.loads, orjson.dumps
    started = time.perf_counter()
    after, done = 0, 0
    with writer(engine.connect()) as conn:
        raw = _driver(conn)
        cursor = raw.cursor()
        while True:
            with conn.begin():
                cursor.execute(select, (after, CHUNK))
                rows = cursor.fetchall()
                for position, kind, body_bytes in rows:
                    doc = loads(body_bytes)
                    data = doc["data"]
                    cursor.execute(
                        upsert,
                        (
                            doc["entity"],
                            doc["id"],
                            data.get("name"),
                            data.get("n"),
                            dumps(data).decode(),
                            str(doc["version"]),
                            position,
                            kind == "data_deleted",
                        ),
                    )
            if not rows:
                break
            done += len(rows)
            after = rows[-1][0]
        cursor.close()
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"events": done, "seconds": seconds, "dialect": dialect}


def hookledger_rebuild(url: str) -> dict:
    """Build the projection from position 1 through the engine (as `hookledger rebuild`)."""
    from projections import versions
    from projections.adapters import load_adapters
    from projections.worker import Worker

    engine = make_engine(url)
    sources = {"app": SourceConfig("app", "none")}  # the events `generate` wrote
    config = Config(path="bench", sources=sources, projections={"entities": PROJECTION})
    projectors = load_adapters(config)
    started = time.perf_counter()
    worker = Worker(engine, projectors, owner="bench")
    while worker.run_once():
        pass
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        live, _ = versions.active(conn, "entities")
        rows = conn.execute(text("SELECT count(*) FROM entities")).scalar()
    engine.dispose()
    assert live is not None, "the projection has no live version"
    return {"events": live.position, "seconds": seconds, "rows": rows}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM starts afresh at exec; ru_maxrss does not)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, url: str) -> None:
    result = {"hand": hand_loop, "engine": hookledger_rebuild, "sql": set_based}[kind](url)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(kind: str, url: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.rebuild", "--child", kind, "--url", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="database URL (default: a SQLite file in a temp dir)")
    where.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway local PostgreSQL (initdb, pg_ctl) and run there",
    )
    parser.add_argument("--child", choices=["hand", "engine", "sql"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.url)
        return 0
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.postgres:
            from bench.harness import throwaway_postgres

            started = throwaway_postgres(stack)
            if started is None:
                return 2
            url = started[0].create_database()
        return compare(args.events, url)


def compare(count: int, url: str | None) -> int:
    """Generate `count` events, then time the hand loop and the engine on them."""
    scratch = None if url else tempfile.mkdtemp(prefix="hl-rebuild-")
    url = url or f"sqlite:///{scratch}/ledger.db"
    try:
        t0 = time.perf_counter()
        generate(url, count)
        print(f"generated {count:,} events in {time.perf_counter() - t0:.1f}s ({url})")
        hand = measure("hand", url)
        engine = measure("engine", url)
        ceiling = measure("sql", url)
    finally:
        if scratch is not None:  # a million events is 1.4 GB: do not leave it behind
            shutil.rmtree(scratch, ignore_errors=True)
    rates = {}
    for name, r in (("hand loop", hand), ("hookledger", engine), ("set-based", ceiling)):
        rates[name] = rate = r["events"] / r["seconds"]
        print(
            f"{name:>11}: {r['events']:,} events in {r['seconds']:.1f}s = {rate:,.0f}/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    ratio = rates["hookledger"] / rates["hand loop"]
    of_ceiling = rates["hookledger"] / rates["set-based"]
    print(f"ratio hookledger / hand loop: {ratio:.2f}")
    print(f"ratio hookledger / set-based ceiling: {of_ceiling:.2f}")
    print(f"ratio hand loop / set-based ceiling: {rates['hand loop'] / rates['set-based']:.2f}")
    summary = {"hand": hand, "engine": engine, "sql": ceiling, "ratio": ratio}
    print(json.dumps({**summary, "of_ceiling": of_ceiling, "events": count}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
