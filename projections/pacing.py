"""Batch sizes set by time: every write transaction of the engine stays short.

SPEC 6 bounds each write transaction of the engine to about 0.25 s, whatever
the table size: on SQLite, ingest waits for the same write lock. A `Pacer`
sizes the next batch from how long the last one held the transaction, and
says how long to leave the lock free before taking it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

HOLD_TARGET_S = 0.1  # aimed at per transaction: the bound (0.25 s) with room for a slow commit
BREATH_RATIO = 0.5  # SQLite: after a full batch, the lock stays free half as long as it was held


@dataclass
class Pacer:
    """The size of the next batch (events, or rows to delete) of one piece of work."""

    size: int
    maximum: int
    minimum: int = 1
    target_s: float = HOLD_TARGET_S
    last_hold_s: float = 0.0

    def record(self, count: int, seconds: float) -> None:
        """A batch of `count` held its transaction `seconds`: size the next one.

        Slow batches shrink it in proportion; only full batches that were fast grow it
        (at most twice), so a trickle of small live batches does not inflate it."""
        self.last_hold_s = seconds
        if seconds > self.target_s:
            self.size = max(self.minimum, int(count * self.target_s / seconds))
        elif count >= self.size and seconds > 0:
            self.size = min(
                self.maximum, max(self.size + 1, int(self.size * min(2.0, self.target_s / seconds)))
            )
        elif count >= self.size:
            self.size = min(self.maximum, self.size * 2)

    def breathe(self, single_writer: bool) -> None:
        """Where one writer holds the whole database (SQLite), leave the write lock free
        for a while after a long transaction, so writers polling for it (SQLite's busy
        handler sleeps up to 100 ms) get their turn."""
        if single_writer and self.last_hold_s > self.target_s / 4:
            time.sleep(self.last_hold_s * BREATH_RATIO)


class Stopwatch:
    """Seconds since it was started; `with Stopwatch() as w: ...; w.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.started
