"""Refused deliveries waiting for the writer: a bounded lane beside the log's queue.

A flood of bad signatures must not slow real ingest, so rejections never share
a transaction with deliveries: the appender writes them only when no delivery
is waiting, a short batch at a time, and leaves the database to deliveries
most of the time (see `Appender`). What does not fit in the lane meanwhile is
dropped, oldest first, and counted as `unrecorded`, never lost from the counts.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ledger.recorder.rejections import Tally, stored_size

MAX_PENDING = 1024  # rejections waiting to be written
MAX_PENDING_BYTES = 4 * 1024 * 1024  # and their stored size


class RejectionLane:
    """Thread-safe: request handlers offer, the writer thread takes."""

    def __init__(self, max_items: int = MAX_PENDING, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: deque[tuple[Any, int]] = deque()  # (waiter, stored size)
        self._bytes = 0
        self._tally: Tally = {}

    def offer(self, waiter: Any) -> tuple[list[Any], bool]:
        """Queue `waiter` (its `item` a Rejection); returns the waiters dropped to make
        room, and whether the lane was empty (the writer may need waking)."""
        size = stored_size(waiter.item)
        dropped = []
        with self._lock:
            was_empty = not self._pending and not self._tally
            self._count(waiter.item, refused=1)
            self._pending.append((waiter, size))
            self._bytes += size
            while len(self._pending) > self.max_items or (
                self._bytes > self.max_bytes and len(self._pending) > 1
            ):
                old, old_size = self._pending.popleft()
                self._bytes -= old_size
                self._count(old.item, unrecorded=1)
                dropped.append(old)
        return dropped, was_empty

    def take(self, max_bytes: int | None) -> tuple[list[Any], Tally]:
        """The oldest waiters up to `max_bytes` (at least one; all when None), and the
        counts gathered since the last take."""
        taken: list[Any] = []
        with self._lock:
            size = 0
            while self._pending:
                waiter, item_size = self._pending[0]
                if taken and max_bytes is not None and size + item_size > max_bytes:
                    break
                self._pending.popleft()
                self._bytes -= item_size
                size += item_size
                taken.append(waiter)
            tally, self._tally = self._tally, {}
        return taken, tally

    def restore(self, tally: Tally, unwritten: list[Any]) -> None:
        """Give back the counts of a take whose write failed, its waiters as unrecorded."""
        with self._lock:
            for key, (refused, unrecorded) in tally.items():
                entry = self._tally.setdefault(key, [0, 0])
                entry[0] += refused
                entry[1] += unrecorded
            for waiter in unwritten:
                self._count(waiter.item, unrecorded=1)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._pending or self._tally)

    def _count(self, item: Any, refused: int = 0, unrecorded: int = 0) -> None:
        entry = self._tally.setdefault((item.source, item.reason), [0, 0])
        entry[0] += refused
        entry[1] += unrecorded
