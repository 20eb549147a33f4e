"""Group commit: concurrent deliveries share one transaction and one fsync.

Request handlers `await append(event)`; one writer thread drains whatever
has queued, appends it in a single transaction and resolves each waiter
only after the commit returned, so nothing is acknowledged before it is
durable. While one batch commits, the next one gathers.

Refused deliveries take a lane of their own (`RejectionLane`): written only
while no delivery waits, in batches of at most REJECTION_BATCH_BYTES, and at
most REJECTION_DUTY of the time and REJECTION_BYTES_PER_S, so a flood of bad
signatures cannot slow the log down; `rejections_max_bytes` bounds the table.
Merging body digests into `body_firsts` (`ledger.recorder.body_firsts`) is idle work too:
done once no delivery has arrived for IDLE_MERGE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from ledger.errors import HookledgerError, NotMigrated, StorageUnavailable
from ledger.recorder import (
    Appended,
    NewEvent,
    Rejection,
    append_batch,
    body_firsts,
    translated,
    writer,
)
from ledger.recorder.rejections import keep, stored_size
from ledger.rejection_lane import RejectionLane

log = logging.getLogger("hookledger.appender")

REJECTION_BATCH_BYTES = 256 * 1024  # stored bytes per rejections transaction
REJECTION_DUTY = 0.1  # at most this share of the writer's time goes to rejections
REJECTION_BYTES_PER_S = 2 * 1024 * 1024  # and at most this many stored bytes a second
REJECTION_RETRY_S = 1.0  # after a failed rejections write
REJECTION_WAIT_S = 1.0  # a 401 waits at most this for its rejection to be written
DEFAULT_REJECTIONS_MAX_BYTES = 64 * 1024 * 1024
IDLE_MERGE_S = 0.05  # no delivery for this long: merge body digests
MERGE_RETRY_S = 1.0  # after a failed merge
_WAKE = object()  # queued when the rejection lane stops being empty


Item = TypeVar("Item", NewEvent, Rejection)


@dataclass(slots=True)
class _Waiter(Generic[Item]):
    """One queued delivery (or rejection) and the future its request awaits."""

    item: Item
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


class Appender:
    """The single writer of one process; `on_commit(head, size)` runs after each batch."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 512,
        on_commit: Callable[[int, int], None] | None = None,
        rejections_max_bytes: int = DEFAULT_REJECTIONS_MAX_BYTES,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.rejections_max_bytes = rejections_max_bytes
        self.lane = RejectionLane()
        self._rejections_after = 0.0  # monotonic time before which none are written
        self._merge_due = False  # appended since the last merge step found nothing to do
        self._merge_after = 0.0  # monotonic time before which no merge is tried
        self.batches = 0
        self.appended = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # _Waiter, _WAKE, None
        self._stopping = False
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="hookledger-appender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        self._stopping = True
        self._queue.put(None)  # the writer drains everything before this, then stops
        self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()

    async def append(
        self, event: NewEvent, loop: asyncio.AbstractEventLoop | None = None
    ) -> Appended:
        """Append one delivery; returns once it is durable.

        `loop` is the running loop, when the caller has it at hand: on Python 3.11
        looking it up costs a getpid() system call, on every delivery."""
        return await self._submit(event, loop or asyncio.get_running_loop())

    async def reject(self, rejection: Rejection) -> bool:
        """Queue one refused delivery for `rejections`: True once it is written, False
        when it was dropped (counted as unrecorded), failed, or is still queued after
        REJECTION_WAIT_S (the answer to its sender does not wait longer)."""
        if self._stopping:
            raise StorageUnavailable("the server is shutting down")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(rejection, loop, loop.create_future())
        dropped, was_empty = self.lane.offer(waiter)
        if dropped:
            self._settle(dropped, [False] * len(dropped), None)
        if was_empty:
            self._queue.put(_WAKE)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), REJECTION_WAIT_S)
        except TimeoutError:
            return False

    async def _submit(self, item: NewEvent, loop: asyncio.AbstractEventLoop) -> Any:
        if self._stopping:
            raise StorageUnavailable("the server is shutting down")
        waiter = _Waiter(item, loop, loop.create_future())
        self._queue.put(waiter)
        return await waiter.future

    def _run(self) -> None:
        stop = False
        while not stop:
            try:  # blocks until there is work, or until idle work may be done
                first = self._queue.get(timeout=self._idle_wait())
            except queue.Empty:  # no delivery waits: rejections first, then digests
                if self.lane and self._rejections_wait() == 0:
                    self._write_rejections(REJECTION_BATCH_BYTES)
                elif self._merge_due and time.monotonic() >= self._merge_after:
                    self._merge_digests()
                continue
            stop = first is None
            batch = [first] if isinstance(first, _Waiter) else []
            while len(batch) < self.max_batch:  # everything that queued meanwhile
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif item is not _WAKE:
                    batch.append(item)
            if batch:
                self._write(batch)
        if self.lane:  # what is still waiting (at most the lane's bound), in one go
            self._write_rejections(None)
        late = []  # submitted while stopping, after the last batch: refuse, never hang
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if isinstance(item, _Waiter):
                    late.append(item)
        if late:
            self._settle(late, [None] * len(late), StorageUnavailable("the server stopped"))

    def _idle_wait(self) -> float | None:
        """Seconds to wait for a delivery before doing idle work; None: wait for one."""
        waits = [w for w in (self._rejections_wait(), self._merge_wait()) if w is not None]
        return min(waits) if waits else None

    def _merge_wait(self) -> float | None:
        if not self._merge_due:
            return None
        return max(IDLE_MERGE_S, self._merge_after - time.monotonic())

    def _merge_digests(self) -> None:
        """One bounded merge step of body digests, in a transaction of its own."""
        try:
            with translated():
                conn = self._connection()
                with conn.begin():
                    self._merge_due = body_firsts.merge_step(conn)
        except Exception as e:
            self._drop_connection()
            self._merge_after = time.monotonic() + MERGE_RETRY_S
            if isinstance(e, HookledgerError):
                log.warning("could not merge body digests: %s", e)
            else:
                log.exception("could not merge body digests")

    def _rejections_wait(self) -> float | None:
        """Seconds until rejections may be written; None when there are none."""
        if not self.lane:
            return None
        return max(0.0, self._rejections_after - time.monotonic())

    def _write_rejections(self, max_bytes: int | None) -> None:
        """One short transaction of rejections (and the counts), then a pause that keeps
        them under REJECTION_DUTY of the time and REJECTION_BYTES_PER_S."""
        waiters, tally = self.lane.take(max_bytes)
        started = time.monotonic()
        written = False
        try:
            with translated():
                conn = self._connection()
                with conn.begin():
                    keep(conn, [w.item for w in waiters], tally, self.rejections_max_bytes)
            written = True
        except Exception as e:
            self._drop_connection()
            self.lane.restore(tally, waiters)
            if isinstance(e, HookledgerError):
                log.warning("could not record %d rejections: %s", len(waiters), e)
            else:
                log.exception("could not record %d rejections", len(waiters))
        self._settle(waiters, [written] * len(waiters), None)
        now = time.monotonic()
        size = sum(stored_size(w.item) for w in waiters)
        pause = max((now - started) * (1 / REJECTION_DUTY - 1), size / REJECTION_BYTES_PER_S)
        self._rejections_after = now + (pause if written else max(pause, REJECTION_RETRY_S))

    def _write(self, batch: list[_Waiter[NewEvent]]) -> None:
        events = [w.item for w in batch]
        try:
            with translated():
                conn = self._connection()
                with conn.begin():
                    appended = append_batch(conn, events)
        except Exception as e:
            self._drop_connection()
            outage = isinstance(e, StorageUnavailable | NotMigrated)
            if not outage and len(batch) > 1:
                # Not the database being away but something in one item: write them one
                # by one, so one bad delivery cannot fail the others that shared its batch.
                log.warning("a batch of %d failed (%s); retrying one by one", len(batch), e)
                for waiter in batch:
                    self._write([waiter])
                return
            if not outage:
                log.exception("append failed for a batch of %d", len(batch))
            else:
                log.warning("append failed for a batch of %d: %s", len(batch), e)
            self._settle(batch, [None] * len(batch), e)
            return
        self.batches += 1
        self.appended += len(appended)
        self._merge_due = True
        self._settle(batch, list(appended), None)
        if self.on_commit is not None and appended:
            self.on_commit(appended[-1].position, len(appended))

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = writer(self.engine.connect())
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                log.debug("closing a failed writer connection failed too", exc_info=True)
            self._conn = None

    @staticmethod
    def _settle(
        batch: Sequence[_Waiter[Any]], outcomes: list[Any], error: BaseException | None
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for waiter, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(waiter.loop, []).append((waiter.future, outcome))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, pairs, error)
            except RuntimeError:
                log.warning("a request's event loop closed before its append was settled")


def _resolve(pairs: list[tuple[asyncio.Future, Any]], error: BaseException | None) -> None:
    for future, outcome in pairs:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)
