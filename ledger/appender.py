"""Group commit: concurrent deliveries share one transaction and one fsync.

Request handlers `await append(event)`; one writer thread drains whatever
has queued, appends it in a single transaction and resolves each waiter
only after the commit returned, so nothing is acknowledged before it is
durable. While one batch commits, the next one gathers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from ledger.db import translated, writer
from ledger.errors import NotMigrated, StorageUnavailable
from ledger.store import Appended, NewEvent, Rejection, append_batch, insert_rejections

log = logging.getLogger("hookledger.appender")


@dataclass(slots=True)
class _Waiter:
    item: NewEvent | Rejection
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


class Appender:
    """The single writer of one process; `on_commit(head, size)` runs after each batch."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 512,
        on_commit: Callable[[int, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.batches = 0
        self.appended = 0
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()
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

    async def reject(self, rejection: Rejection) -> None:
        """Record one refused delivery in `rejections`."""
        await self._submit(rejection, asyncio.get_running_loop())

    async def _submit(self, item: NewEvent | Rejection, loop: asyncio.AbstractEventLoop) -> Any:
        if self._stopping:
            raise StorageUnavailable("the server is shutting down")
        waiter = _Waiter(item, loop, loop.create_future())
        self._queue.put(waiter)
        return await waiter.future

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()  # blocks until there is work
            batch = [] if first is None else [first]
            stop = first is None
            while len(batch) < self.max_batch:  # everything that queued meanwhile
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
        late = []  # submitted while stopping, after the last batch: refuse, never hang
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    late.append(item)
        if late:
            self._settle(late, [None] * len(late), StorageUnavailable("the server stopped"))

    def _write(self, batch: list[_Waiter]) -> None:
        events = [w.item for w in batch if isinstance(w.item, NewEvent)]
        refused = [w.item for w in batch if isinstance(w.item, Rejection)]
        try:
            with translated():
                conn = self._connection()
                with conn.begin():
                    appended = append_batch(conn, events)
                    insert_rejections(conn, refused)
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
        results = iter(appended)
        outcomes = [next(results) if isinstance(w.item, NewEvent) else None for w in batch]
        self._settle(batch, outcomes, None)
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
    def _settle(batch: list[_Waiter], outcomes: list[Any], error: BaseException | None) -> None:
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
