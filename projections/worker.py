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
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, Engine, Row

from ledger.errors import HookledgerError, StatementFailed
from ledger.recorder import is_unavailable, read_head, recorder_for, translated, writer
from ledger.recorder.failures import first_line
from projections import failures, leases, swap, versions
from projections.adapters import Adapter, gc_paused
from projections.model import Event
from projections.pacing import Pacer, Stopwatch
from projections.versioned import own_projector

log = logging.getLogger("hookledger.projector")

LIVE_BATCH = 1000
REBUILD_BATCH = 10_000
FIRST_BATCH = 1000  # a version's batches start here and grow while they stay short
LEASE_TTL_S = 5.0
IDLE_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class _Run:
    """A version whose state is `running`, with the projector it is applied with."""

    row: Row
    projector: Adapter

    @classmethod
    def of(cls, row: Row | None, projector: Adapter | None) -> _Run | None:
        if row is None or projector is None or row.state != "running":
            return None
        return cls(row, projector)


def worker_id() -> str:
    """host:pid:random, so a lease names who holds it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def read_events(conn: Connection, projector: Adapter, after: int, upto: int) -> list[Event]:
    """The events a projector may want in (after, upto], in position order."""
    rows = recorder_for(conn).fold_rows(conn, after, upto, projector.source, projector.types)
    return list(itertools.starmap(Event, rows))


class Worker:
    """Works every projection it can lease, until stopped."""

    def __init__(
        self,
        engine: Engine,
        projectors: dict[str, Adapter],
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
        self._owns: dict[tuple[str, int, str], Adapter | None] = {}
        self._pacers: dict[tuple, Pacer] = {}
        self._undroppable: set[tuple] = set()
        self.longest_hold_s = 0.0  # the longest write transaction so far (SPEC 6: ~0.25 s)

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
                leases.release_lease(self.engine, name, self.owner)
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
        if not leases.acquire_lease(self.engine, name, self.owner, self.lease_ttl):
            self._renew_after.pop(name, None)
            return False
        self._renew_after[name] = now + self.lease_ttl / 3
        return True

    def work(self, projector: Adapter) -> bool:
        """Advance the live and building versions of one projection; swap when ready."""
        if projector.name not in self._ensured:
            try:
                created = versions.ensure_current(self.engine, projector)
            except versions.RebuildRefused as e:
                log.error("%s", e)  # the live version (if any) keeps serving
                created = None
            self._ensured.add(projector.name)
            if created is not None:
                log.info(
                    "%s: building version %d (%s)", projector.name, created.version, created.reason
                )
        with self.engine.connect() as conn:
            rows = versions.of(conn, projector.name)
            live, building = versions.active_of(rows)
            head, _ = read_head(conn)
            live_p = self._own(conn, live, projector)
            building_p = self._own(conn, building, projector)
        live_run = _Run.of(live, live_p)
        build = _Run.of(building, building_p)
        if build is not None:
            pacer = self._pacer(build.row, self.rebuild_batch)
            if head - build.row.position <= pacer.size and (
                live_run is None or live_run.row.position == build.row.position
            ):
                return self._guard(build.row, lambda: self.finish(build.projector, build.row, live))
        busy = False
        if live_run is not None and live_run.row.position < head:
            pacer = self._pacer(live_run.row, self.live_batch)
            busy |= self._guard(
                live_run.row, lambda: self.step(live_run.projector, live_run.row, head, pacer)
            )
        if build is not None and build.row.position < head:
            pacer = self._pacer(build.row, self.rebuild_batch)
            busy |= self._guard(
                build.row, lambda: self.step(build.projector, build.row, head, pacer)
            )
        for retired in versions.undropped(rows):
            busy |= self._drop(retired)
        return busy

    def _own(self, conn, row: Row | None, projector: Adapter) -> Adapter | None:
        """The projector a version is applied with (its own definition), cached per version."""
        if row is None:
            return None
        key = (row.name, row.version, projector.fingerprint)
        if key not in self._owns:
            own = own_projector(conn, row, projector)
            if own is None:
                log.warning(
                    "%s v%d: built with another definition that cannot be applied any more: "
                    "it keeps serving what it has until the new version swaps in",
                    row.name,
                    row.version,
                )
            self._owns[key] = own
        return self._owns[key]

    def _pacer(self, row: Row, maximum: int) -> Pacer:
        key = (row.name, row.version)
        if key not in self._pacers:
            self._pacers[key] = Pacer(size=min(maximum, FIRST_BATCH), maximum=maximum)
        return self._pacers[key]

    def _guard(self, row: Row, action: Callable[[], bool]) -> bool:
        """Run one version's work; an error other than the database being away fails that
        version (state `failed`, with the error) instead of being retried forever."""
        try:
            return action()
        except HookledgerError:
            raise
        except Exception as e:
            if is_unavailable(e):
                raise
            message = f"{type(getattr(e, 'orig', None) or e).__name__}: {first_line(e)}"
            log.exception("%s v%d failed: %s", row.name, row.version, message)
            with translated(), writer(self.engine.connect()) as conn, conn.begin():
                failures.fail(conn, row, message, traceback.format_exc())
            return True

    def step(self, projector: Adapter, version: Row, head: int, batch: int | Pacer) -> bool:
        """Apply one batch to one version, checkpoint included, in one transaction.

        The batch is sized by time (a `Pacer`; an int is a fixed size): the transaction
        holds the write lock briefly."""
        pacer = batch if isinstance(batch, Pacer) else Pacer(size=batch, maximum=batch)
        # The batch's objects all die with the step, before the collector is back on:
        # it need not walk thousands of parsed documents (see gc_paused).
        with gc_paused():
            start = version.position
            upto = min(head, start + pacer.size)
            with self.engine.connect() as conn:
                batch_events = read_events(conn, projector, start, upto)
            with writer(self.engine.connect()) as conn, Stopwatch() as watch, conn.begin():
                moved = self._apply(conn, projector, version, start, upto, batch_events)
                if moved is None:
                    conn.rollback()
                    return False
        pacer.record(upto - start, watch.seconds)
        self.longest_hold_s = max(self.longest_hold_s, watch.seconds)
        self._applied()
        pacer.breathe(recorder_for(self.engine).single_writer)
        return True

    def _apply(
        self,
        conn: Connection,
        projector: Adapter,
        version: Row,
        start: int,
        upto: int,
        batch_events: list[Event],
    ) -> int | None:
        """Apply events (start, upto] and move the checkpoint, in the caller's transaction.

        Returns the new checkpoint (less than `upto` when a handler error halted the
        version), or None when the checkpoint had moved (lease lost)."""
        if not versions.advance(conn, version.name, version.version, start, upto):
            log.warning(
                "%s v%d: checkpoint moved under us; lease lost", version.name, version.version
            )
            return None
        table = projector.build_table(version.table_name)
        outcome = projector.apply(conn, table, batch_events)
        versions.count_rows(
            conn, version.name, version.version, outcome.rows_added, outcome.rows_total
        )
        failures.record_errors(conn, version.name, version.version, outcome.errors)
        if not outcome.errors:
            return upto
        last = outcome.errors[-1]
        values = {"last_error": f"position {last[0]}: {last[1]}"}
        if outcome.halted_at is None:
            versions.advance(conn, version.name, version.version, upto, upto, **values)
            return upto
        values["state"] = "failed"
        versions.advance(conn, version.name, version.version, upto, outcome.halted_at - 1, **values)
        log.error(
            "%s v%d halted at position %d: %s",
            version.name,
            version.version,
            outcome.halted_at,
            last[1],
        )
        return outcome.halted_at - 1

    def finish(self, projector: Adapter, building: Row, live: Row | None) -> bool:
        """Swap a caught-up build in, then report how it differs from the old version.

        The write transaction runs only the last catch-up and the switch. The diff reads
        a snapshot taken just before it, without the lock; the old table is dropped in
        steps afterwards (`work`)."""
        with swap.snapshot(self.engine) as before:
            with writer(self.engine.connect()) as conn, Stopwatch() as watch, conn.begin():
                head, _ = read_head(conn)
                position = building.position
                if head > position:
                    batch_events = read_events(conn, projector, position, head)
                    position = self._apply(conn, projector, building, position, head, batch_events)
                    if position is None:
                        conn.rollback()
                        return False
                    if position < head:  # halted: the build failed, the live version stays
                        self._applied()
                        return True
                if not swap.switch(conn, projector.name, building, position, live):
                    conn.rollback()
                    return False
            self.longest_hold_s = max(self.longest_hold_s, watch.seconds)
            log.info(
                "%s: version %d is live (switch held %.3f s)",
                projector.name,
                building.version,
                watch.seconds,
            )
            self._applied()
            diff = None
            if live is not None:
                old = swap.reflect(before, live.table_name)
                new = swap.reflect(before, building.table_name)
                diff = swap.diff_tables(before, old, new, projector.tombstones)
        swap.record_diff(self.engine, building, diff)
        if diff is not None and live is not None:
            log.info(
                "%s: version %d differs from version %d: rows added %d, removed %d, changed %d",
                projector.name,
                building.version,
                live.version,
                diff["added"],
                diff["removed"],
                diff["changed"],
            )
        return True

    def _drop(self, row: Row) -> bool:
        """One bounded step of dropping a retired or abandoned version's table."""
        key = (row.name, row.version, "drop")
        if key in self._undroppable:
            return False
        pacer = self._pacers.setdefault(key, swap.drop_pacer())
        try:
            done = swap.drop_step(self.engine, row, pacer)
        except HookledgerError:
            raise
        except Exception as e:
            if is_unavailable(e):
                raise
            # the live version is not concerned: say so once, leave the table to an operator
            log.exception("%s: cannot drop the table of version %d", row.name, row.version)
            self._undroppable.add(key)
            return False
        self.longest_hold_s = max(self.longest_hold_s, pacer.last_hold_s)
        if done:
            log.info("%s: dropped the table of version %d", row.name, row.version)
        pacer.breathe(recorder_for(self.engine).single_writer)
        return True

    def _applied(self) -> None:
        if self.on_applied is not None:
            self.on_applied()


class Runnable(Protocol):
    """What runs in a `WorkerThread`: a projector's `Worker`, a `DeliveryWorker`."""

    def run(self) -> None: ...
    def stop(self) -> None: ...


class WorkerThread:
    """A worker in a background thread (used by `serve`), woken by the appender."""

    def __init__(
        self, worker: Runnable, name: str = "hookledger-projector", join_s: float = 15
    ) -> None:
        self.worker = worker
        self.join_s = join_s
        self.thread = threading.Thread(target=worker.run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=self.join_s)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout`; for CLIs and tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
