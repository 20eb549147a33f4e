"""What to hand over next, and what the checkpoint is: one destination's plan; pure.

A `Plan` holds the events read past the checkpoint that are not handed over yet, a
queue per key (with `order = "log"`, one queue). Only the oldest event of a queue is
ever in flight, so within a key no event is handed over before an earlier one was;
other keys go on while one retries. The checkpoint is the position before the oldest
event still owed (or how far the log was read, when none is).

Every outcome is also put in the plan's `Journal`, which the worker writes in one
transaction with the checkpoint (`destinations.store.flush`).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from destinations.spec import Destination
from ledger.pointer import MISSING, resolve, scalar_text
from projections.model import NOT_JSON, Event

MAX_OWED = 10_000  # events read ahead of the checkpoint and not yet handed over
MAX_OWED_BYTES = 64 * 1024 * 1024
JITTER = 0.2  # a delay is drawn from +-20% around its step


def backoff(spec: Destination, attempts: int, draw: float | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones: the step of
    `retry_seconds` (its last repeats), with jitter so receivers are not hit in step."""
    step = spec.retry_seconds[min(attempts, len(spec.retry_seconds)) - 1]
    draw = random.random() if draw is None else draw
    return step * (1 - JITTER + 2 * JITTER * draw)


def key_of(spec: Destination, event: Event) -> str | None:
    """The ordering key: one for the whole destination with `order = "log"`; else the
    value at `key` (as text; JSON text when not a scalar), None when it has none."""
    if spec.order == "log" or spec.key is None:
        return ""
    doc = event.json()
    value = MISSING if doc is NOT_JSON else resolve(doc, spec.key)
    if value is MISSING or value is None:
        return None
    text = scalar_text(value)
    return text if text is not None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(slots=True)
class Item:
    """One event owed to the destination."""

    event: Event
    content_type: str | None
    key: str | None
    attempts: int = 0  # this round's failed attempts
    next_at: float = 0.0  # epoch seconds before which it is not tried again
    in_flight: bool = False
    extra: bool = False  # a redelivery asked by an operator, outside the order

    @property
    def position(self) -> int:
        return self.event.position

    @property
    def size(self) -> int:
        return len(self.event.body or b"")


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt came to: `delivered`, `failed` (retried) or `gone` (410)."""

    outcome: str
    started_us: int
    duration_us: int
    status: int | None = None
    error: str | None = None
    response: str | None = None


@dataclass
class Journal:
    """What happened since the last write, to be written with the checkpoint."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    window: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)  # redeliveries done or given up
    dead: list[int] = field(default_factory=list)
    state: tuple[str, str | None, int | None] | None = None  # state, reason, failed_position
    clear_below: bool = False  # window rows at or below the new checkpoint are to be deleted
    counts: dict[str, int] = field(default_factory=lambda: {"delivered": 0, "failed": 0, "dead": 0})

    def __bool__(self) -> bool:
        return bool(self.attempts or self.window or self.dropped or self.dead or self.state)


@dataclass(frozen=True)
class Saved:
    """A destination's durable state, as the plan starts from it."""

    position: int
    state: str
    generation: int
    notices: int = 0
    failed_position: int | None = None
    done: frozenset[int] = frozenset()  # handed over (or skipped) ahead of the checkpoint
    windowed: frozenset[int] = frozenset()  # positions with a window row above the checkpoint
    retrying: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # attempts, next
    redeliver: frozenset[int] = frozenset()


class Plan:
    """One destination's events owed, by key, and its checkpoint."""

    def __init__(self, spec: Destination, saved: Saved) -> None:
        self.spec = spec
        self.state = saved.state
        self.generation = saved.generation
        self.notices = saved.notices
        self.failed_position = saved.failed_position
        self.checkpoint = saved.position  # as written
        self.read_to = saved.position  # every wanted event up to it is queued or done
        self.done_ahead = set(saved.done)
        self.windowed = set(saved.windowed)  # window rows written above the checkpoint
        self.retrying = dict(saved.retrying)
        self.redeliver = set(saved.redeliver)
        self.queues: dict[str | None, deque[Item]] = {}
        self.owed: list[int] = []  # a heap of queued positions (done ones are dropped lazily)
        self.done: set[int] = set()
        # queue heads to try: (next_at, position, push number, key); stale ones are skipped
        self.heads: list[tuple[float, int, int, str | None]] = []
        self._pushes = itertools.count()
        self.extras: dict[int, Item] = {}
        self.in_flight = 0
        self.owed_count = 0
        self.owed_bytes = 0
        self.journal = Journal()

    # --- reading ahead ------------------------------------------------------------

    def room(self) -> int:
        """How many more events may be read ahead (0: wait for some to be handed over)."""
        if self.owed_bytes >= MAX_OWED_BYTES:
            return 0
        return max(MAX_OWED - self.owed_count, 0)

    def add(self, items: Iterable[Item], read_to: int) -> None:
        """Queue what was read, in position order, up to `read_to` (the last position read)."""
        for item in items:
            if item.position in self.done_ahead:
                continue
            if item.position in self.retrying:
                item.attempts, next_us = self.retrying.pop(item.position)
                item.next_at = (next_us or 0) / 1e6
            queue = self.queues.get(item.key)
            if queue is None:
                queue = self.queues[item.key] = deque()
            queue.append(item)
            heapq.heappush(self.owed, item.position)
            self.owed_count += 1
            self.owed_bytes += item.size
            if len(queue) == 1:
                self._head(item)
        self.read_to = max(self.read_to, read_to)

    def add_extra(self, item: Item) -> None:
        """An operator's redelivery of one event: handed over once more, outside the order."""
        item.extra = True
        self.extras.setdefault(item.position, item)

    def _head(self, item: Item) -> None:
        heapq.heappush(self.heads, (item.next_at, item.position, next(self._pushes), item.key))

    # --- handing over -------------------------------------------------------------

    def ready(self, now: float) -> list[Item]:
        """Items to start now: redeliveries and queue heads whose time has come, up to the
        destination's concurrency; none unless the destination is live."""
        out: list[Item] = []
        if self.state != "live":
            return out
        for item in self.extras.values():
            if self.in_flight >= self.spec.in_flight_max:
                return out
            if not item.in_flight and item.next_at <= now:
                self._start(item, out)
        while self.heads and self.in_flight < self.spec.in_flight_max:
            at, position, _, key = self.heads[0]
            if at > now:
                break
            heapq.heappop(self.heads)
            queue = self.queues.get(key)
            if not queue or queue[0].position != position:
                continue  # no longer a head (handed over since)
            item = queue[0]
            if not item.in_flight and item.next_at <= now:
                self._start(item, out)
        return out

    def _start(self, item: Item, out: list[Item]) -> None:
        item.in_flight = True
        self.in_flight += 1
        out.append(item)

    def next_at(self) -> float | None:
        """When the earliest waiting item may be tried; None when nothing can start before
        an attempt ends or the state changes (both wake the worker)."""
        if self.state != "live" or self.in_flight >= self.spec.in_flight_max:
            return None
        while self.heads:
            _, position, _, key = self.heads[0]
            queue = self.queues.get(key)
            if queue and queue[0].position == position and not queue[0].in_flight:
                break
            heapq.heappop(self.heads)  # no longer a waiting head
        times = [i.next_at for i in self.extras.values() if not i.in_flight]
        if self.heads:
            times.append(self.heads[0][0])
        return min(times, default=None)

    def finished(self, item: Item, result: Result) -> None:
        """Take an attempt's result: hand over, schedule a retry, declare dead, pause."""
        item.in_flight = False
        self.in_flight -= 1
        attempt = item.attempts + (0 if result.outcome == "gone" else 1)
        outcome = result.outcome
        if outcome == "failed" and attempt >= self.spec.max_attempts:
            outcome = "dead"
        self.journal.attempts.append(
            {
                "destination": self.spec.name,
                "position": item.position,
                "attempt": max(attempt, 1),
                "generation": self.generation,
                "started_at_us": result.started_us,
                "outcome": outcome,
                "status": result.status,
                "error": result.error,
                "duration_us": result.duration_us,
                "response": result.response,
            }
        )
        counted = "delivered" if outcome == "delivered" else "failed"
        self.journal.counts[counted] += 1
        if item.extra:
            self._finish_extra(item, outcome, attempt, result)
            return
        if outcome == "delivered":
            self._done(item)
        elif outcome == "gone":
            self.state = "paused"
            self.journal.state = (
                "paused",
                f"the endpoint answered 410 Gone at position {item.position}",
                None,
            )
            self._head(item)
        elif outcome == "dead":
            item.attempts = attempt
            if self.spec.on_dead == "skip":
                self.journal.dead.append(item.position)
                self.journal.counts["dead"] += 1
                self._done(item)
                self._window(item.position, ("done", attempt, None))
            else:
                self.state = "failed"
                self.failed_position = item.position
                self.journal.state = (
                    "failed",
                    f"position {item.position} is dead after {attempt} attempts: "
                    f"{result.error or result.status}",
                    item.position,
                )
                self._window(item.position, ("retrying", attempt, None))
                self._head(item)
        else:
            item.attempts = attempt
            item.next_at = result.started_us / 1e6 + backoff(self.spec, attempt)
            self._window(item.position, ("retrying", attempt, int(item.next_at * 1e6)))
            self._head(item)

    def _finish_extra(self, item: Item, outcome: str, attempt: int, result: Result) -> None:
        if outcome == "failed":
            item.attempts = attempt
            item.next_at = result.started_us / 1e6 + backoff(self.spec, attempt)
            return
        # delivered, dead (given up) or gone: this redelivery is over
        del self.extras[item.position]
        self.redeliver.discard(item.position)
        self.journal.dropped.add(item.position)

    def _done(self, item: Item) -> None:
        queue = self.queues[item.key]
        queue.popleft()
        if queue:
            self._head(queue[0])
        else:
            del self.queues[item.key]
        self.done.add(item.position)
        self.owed_count -= 1
        self.owed_bytes -= item.size
        # No window row for a delivery ahead of the checkpoint: its attempt, written in
        # the same transaction, is the record (`destinations.store.saved` reads it back).

    def _window(self, position: int, row: tuple[str, int, int | None]) -> None:
        self.journal.window[position] = row
        self.windowed.add(position)

    # --- the checkpoint -------------------------------------------------------------

    def target(self) -> int:
        """The checkpoint as it stands: before the oldest event owed, else as far as read."""
        while self.owed and self.owed[0] in self.done:
            self.done.discard(heapq.heappop(self.owed))
        return self.owed[0] - 1 if self.owed else self.read_to

    def take(self) -> tuple[Journal, int]:
        """The journal so far and the checkpoint to write with it; a new journal starts.

        Window rows at or below the new checkpoint are left out: the checkpoint covers
        them (the writer deletes the old ones)."""
        journal, self.journal = self.journal, Journal()
        target = self.target()
        journal.window = {p: w for p, w in journal.window.items() if p > target}
        journal.clear_below = any(p <= target for p in self.windowed)
        return journal, target

    def written(self, checkpoint: int) -> None:
        """The journal taken with `checkpoint` is durable."""
        self.checkpoint = checkpoint
        self.done_ahead = {p for p in self.done_ahead if p > checkpoint}
        self.windowed = {p for p in self.windowed if p > checkpoint}
