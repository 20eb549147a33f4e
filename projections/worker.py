"""The projector loop: tail the log, apply batches, checkpoint, swap rebuilt versions.

A worker holds one lease per projection it works (several workers share
the projections between them and take over an expired lease within
seconds). Each batch runs in one transaction that first moves the
checkpoint by compare-and-set, then writes the projection's rows, so a
crash at any instant neither loses nor repeats an effect.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import Engine, Row

from ledger.db import translated, writer
from ledger.errors import HookledgerError, StatementFailed
from ledger.store import read_head
from projections import registry
from projections.model import Event
from projections.projector import Projector, gc_paused

log = logging.getLogger("hookledger.projector")

LIVE_BATCH = 1000
REBUILD_BATCH = 10_000
LEASE_TTL_S = 5.0
IDLE_POLL_S = 1.0


def worker_id() -> str:
    """host:pid:random, so a lease names who holds it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def read_events(conn, projector: Projector, after: int, upto: int) -> list[Event]:
    """The events a projector may want in (after, upto], in position order.

    Read with a driver cursor: a rebuild reads millions of rows, and building
    SQLAlchemy rows for them cost more than the fold itself."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        "SELECT position, source, event_id, event_type, received_at_us, body, duplicate_of "
        f"FROM events WHERE position > {mark} AND position <= {mark}"
    )
    params: list = [after, upto]
    if projector.source is not None:
        sql += f" AND source = {mark}"
        params.append(projector.source)
    if projector.types is not None:
        if not projector.types:
            return []  # wants no type at all (and PostgreSQL refuses `IN ()`)
        sql += f" AND event_type IN ({', '.join([mark] * len(projector.types))})"
        params.extend(projector.types)
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql + " ORDER BY position", params)
        return list(itertools.starmap(Event, cursor.fetchall()))
    finally:
        cursor.close()


class Worker:
    """Works every projection it can lease, until stopped."""

    def __init__(
        self,
        engine: Engine,
        projectors: dict[str, Projector],
        owner: str | None = None,
        live_batch: int = LIVE_BATCH,
        rebuild_batch: int = REBUILD_BATCH,
        lease_ttl: float = LEASE_TTL_S,
        idle_poll: float = IDLE_POLL_S,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.projectors = projectors
        self.owner = owner or worker_id()
        self.live_batch = live_batch
        self.rebuild_batch = rebuild_batch
        self.lease_ttl = lease_ttl
        self.idle_poll = idle_poll
        self.on_applied = on_applied  # after each committed batch or swap (read-your-writes)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ensured: set[str] = set()
        self._renew_after: dict[str, float] = {}

    # --- control ---------------------------------------------------------------

    def wake(self, *_: object) -> None:
        """New events are in the log: stop waiting."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Loop until `stop()`; storage trouble is logged and retried, never fatal."""
        log.info("projector %s working %s", self.owner, ", ".join(self.projectors) or "nothing")
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except StatementFailed:  # a bug, not an outage: keep its traceback
                log.exception("projector pass failed, retrying")
                busy = False
            except HookledgerError as e:
                log.warning("projector pass failed, retrying: %s", e)
                busy = False
            except Exception:
                log.exception("projector pass failed unexpectedly, retrying")
                busy = False
            if not busy:
                self._wake.wait(self.idle_poll)
                self._wake.clear()
        for name in self.projectors:
            try:
                registry.release_lease(self.engine, name, self.owner)
            except Exception:
                log.debug("could not release the lease on %s", name, exc_info=True)

    # --- one pass ----------------------------------------------------------------

    def run_once(self, names: Iterable[str] | None = None) -> bool:
        """One pass over the projections; True when anything was applied or swapped."""
        busy = False
        with translated():
            for name in names or list(self.projectors):
                if not self._hold(name):
                    self._ensured.discard(name)
                    continue
                busy |= self.work(self.projectors[name])
        return busy

    def _hold(self, name: str) -> bool:
        """Take or renew the lease, renewing only once a third of it has passed.

        A renewal is a write (and on SQLite an fsync): doing it on every pass would
        double the cost of catching up one event. Correctness never rests on the
        lease: the checkpoint's compare-and-set refuses a worker that lost it."""
        now = time.monotonic()
        if now < self._renew_after.get(name, 0.0):
            return True
        if not registry.acquire_lease(self.engine, name, self.owner, self.lease_ttl):
            self._renew_after.pop(name, None)
            return False
        self._renew_after[name] = now + self.lease_ttl / 3
        return True

    def work(self, projector: Projector) -> bool:
        """Advance the live and building versions of one projection; swap when ready."""
        if projector.name not in self._ensured:
            try:
                created = registry.ensure_current(self.engine, projector)
            except registry.RebuildRefused as e:
                log.error("%s", e)  # the live version (if any) keeps serving
                created = None
            self._ensured.add(projector.name)
            if created is not None:
                log.info(
                    "%s: building version %d (%s)", projector.name, created.version, created.reason
                )
        with self.engine.connect() as conn:
            live, building = registry.active(conn, projector.name)
            head, _ = read_head(conn)
        busy = False
        if live is not None and live.state == "running" and live.position < head:
            busy |= self.step(projector, live, head, self.live_batch)
        if building is not None and building.state == "running":
            if building.position < head:
                busy |= self.step(projector, building, head, self.rebuild_batch)
            elif live is None or live.state == "failed" or live.position == building.position:
                busy |= self.finish(projector, building, live)
        return busy

    def step(self, projector: Projector, version: Row, head: int, batch: int) -> bool:
        """Apply one batch to one version, checkpoint included, in one transaction."""
        # The batch's objects all die with `_step`, before the collector is back on:
        # it need not walk thousands of parsed documents (see gc_paused).
        with gc_paused():
            return self._step(projector, version, head, batch)

    def _step(self, projector: Projector, version: Row, head: int, batch: int) -> bool:
        start = version.position
        upto = min(head, start + batch)
        with self.engine.connect() as conn:
            batch_events = read_events(conn, projector, start, upto)
        table = projector.build_table(version.table_name)
        with writer(self.engine.connect()) as conn, conn.begin():
            if not registry.advance(conn, version.name, version.version, start, upto):
                log.warning(
                    "%s v%d: checkpoint moved under us; lease lost", version.name, version.version
                )
                conn.rollback()
                return False
            outcome = projector.apply(conn, table, batch_events)
            registry.count_rows(
                conn, version.name, version.version, outcome.rows_added, outcome.rows_total
            )
            registry.record_errors(conn, version.name, version.version, outcome.errors)
            if outcome.errors:
                last = outcome.errors[-1]
                values = {"last_error": f"position {last[0]}: {last[1]}"}
                if outcome.halted_at is not None:
                    values["state"] = "failed"
                    registry.advance(
                        conn, version.name, version.version, upto, outcome.halted_at - 1, **values
                    )
                    log.error(
                        "%s v%d halted at position %d: %s",
                        version.name,
                        version.version,
                        outcome.halted_at,
                        last[1],
                    )
                else:
                    registry.advance(conn, version.name, version.version, upto, upto, **values)
        self._applied()
        return True

    def finish(self, projector: Projector, building: Row, live: Row | None) -> bool:
        """Swap a caught-up build in and report how it differs from the old version."""
        with writer(self.engine.connect()) as conn, conn.begin():
            diff = registry.swap(conn, projector, building, live)
        log.info(
            "%s: version %d is live%s",
            projector.name,
            building.version,
            f" (rows added {diff['added']}, removed {diff['removed']}, changed {diff['changed']})"
            if diff
            else "",
        )
        self._applied()
        return True

    def _applied(self) -> None:
        if self.on_applied is not None:
            self.on_applied()


class WorkerThread:
    """A worker in a background thread (used by `serve`), woken by the appender."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, name="hookledger-projector", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=15)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout`; for CLIs and tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
