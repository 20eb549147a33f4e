"""Waking projectors when the log grows: LISTEN/NOTIFY on PostgreSQL.

In-process (under `serve`) the appender wakes the worker directly; a
separate `project` process on PostgreSQL listens on the channel every
append batch notifies; polling remains the fallback everywhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Engine

from ledger.store import NOTIFY_CHANNEL

log = logging.getLogger("hookledger.projector")


class PgListener:
    """A thread that LISTENs for appends and calls `wake` on each notification."""

    def __init__(self, engine: Engine, wake: Callable[[], None]) -> None:
        url = engine.url.set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.wake = wake
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hookledger-listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.wake()  # anything appended while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake()
            except psycopg.Error as e:
                log.warning("LISTEN connection lost (%s); polling until it is back", e)
                self._stop.wait(1.0)
