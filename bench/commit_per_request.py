"""Commit per request on hookledger's own stack: verify the HMAC, INSERT one row, COMMIT.

The tutorial receiver's logic (`bench.tutorial`) on Starlette and uvicorn, the
stack hookledger runs on, so the comparison isolates group commit: one sqlite3
connection in WAL mode with `synchronous=FULL` (the same durability hookledger
asks of SQLite), one transaction and so one fsync per delivery. It handles one
request at a time: the sqlite3 calls block the event loop, which is also the
fastest way to use one SQLite writer (no lock contention).

    BENCH_TUTORIAL_DB=/tmp/t.db BENCH_WEBHOOK_SECRET=s python -m bench.commit_per_request
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.ceiling import parse_args, readyz, serve

DB_ENV = "BENCH_TUTORIAL_DB"
SECRET_ENV = "BENCH_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-signature"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    signature TEXT NOT NULL,
    body BLOB NOT NULL
)
"""


def connect(path: str, wal: bool = True) -> sqlite3.Connection:
    """The receiver's one connection: WAL (unless `wal` is false: SQLite's default rollback
    journal), synchronous=FULL, table created."""
    db = sqlite3.connect(path, check_same_thread=False)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(SCHEMA)
    db.commit()
    return db


def create_app() -> Starlette:
    """The commit-per-request app; the database path and secret come from the environment."""
    path = os.environ[DB_ENV]
    secret = os.environ[SECRET_ENV].encode()
    state: dict[str, sqlite3.Connection] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["db"] = connect(path)
        try:
            yield
        finally:
            state["db"].close()

    async def receive(request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return Response(b'{"error":"bad signature"}', 401, media_type="application/json")
        db = state["db"]
        db.execute(
            "INSERT INTO events (received_at, signature, body) VALUES (?, ?, ?)",
            (time.time(), signature, body),
        )
        db.commit()
        return Response(b'{"accepted":true}', 202, media_type="application/json")

    return Starlette(
        routes=[
            Route("/hooks/{source}", receive, methods=["POST"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the commit-per-request receiver."""
    args = parse_args(argv, __doc__)
    serve("bench.commit_per_request:create_app", args.host, args.port)


if __name__ == "__main__":
    main()
