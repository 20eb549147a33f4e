"""The tutorial receiver as the tutorials write it: a Flask route on Flask's own server.

Verify the HMAC, open the database (Flask's `g` pattern), INSERT one row,
COMMIT, answer. Served by `app.run(threaded=True)`, which is how most
tutorials run it. The database is in WAL mode with `synchronous=FULL`, the
durability hookledger asks of SQLite, so every delivery costs one fsync; with
BENCH_TUTORIAL_JOURNAL=default it keeps SQLite's default rollback journal, as
the tutorials' code does when it opens the file with nothing else (a commit
then syncs the journal and the database file, and deletes the journal).

    BENCH_TUTORIAL_DB=/tmp/t.db BENCH_WEBHOOK_SECRET=s python -m bench.tutorial --port 8003
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import Sequence

from flask import Flask, g, request

from bench.ceiling import parse_args
from bench.commit_per_request import DB_ENV, SECRET_ENV, SIGNATURE_HEADER, connect

JOURNAL_ENV = "BENCH_TUTORIAL_JOURNAL"  # "wal" (the default here) or "default"


def create_app() -> Flask:
    """The Flask receiver; the database path and secret come from the environment."""
    path = os.environ[DB_ENV]
    secret = os.environ[SECRET_ENV].encode()
    connect(path, wal=os.environ.get(JOURNAL_ENV, "wal") == "wal").close()  # a property of the file
    app = Flask(__name__)

    def get_db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = sqlite3.connect(path)
            g.db.execute("PRAGMA synchronous=FULL")
        return g.db

    @app.teardown_appcontext
    def close_db(exc: BaseException | None = None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()

    @app.post("/hooks/<source>")
    def receive(source: str):
        body = request.get_data()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return {"error": "bad signature"}, 401
        db = get_db()
        db.execute(
            "INSERT INTO events (received_at, signature, body) VALUES (?, ?, ?)",
            (time.time(), signature, body),
        )
        db.commit()
        return {"accepted": True}, 202

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the Flask receiver on Flask's (werkzeug's) threaded server."""
    args = parse_args(argv, __doc__)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    create_app().run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
