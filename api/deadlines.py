"""Body-read deadlines: every delivery's body must arrive within a limit of its headers.

One sweep timer serves every request being read, instead of a timer each:
`asyncio.timeout` pushes and cancels a handle on the loop's heap per request
(about 5 µs a delivery, measured), where this costs a dict insert and delete.
The sweep runs every `tick` seconds while any body is being read, so a
deadline is enforced between `seconds` and `seconds + tick` after the headers.
"""

from __future__ import annotations

import asyncio

MAX_TICK_S = 0.25


class BodyDeadlines:
    """Cancels body reads that outlive `seconds`; `expired` tells that cancel from others."""

    def __init__(self, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        self.seconds = seconds
        self.tick = min(MAX_TICK_S, seconds / 4)
        self.loop = loop
        self._reading: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, task: asyncio.Task) -> None:
        """Start `task`'s deadline (called as its headers are complete)."""
        self._reading[task] = self.loop.time() + self.seconds
        if self._timer is None:
            self._timer = self.loop.call_later(self.tick, self._sweep)

    def disarm(self, task: asyncio.Task) -> None:
        """The body was read (or refused): no deadline any more."""
        self._reading.pop(task, None)

    def expired(self, task: asyncio.Task) -> bool:
        """True once for a task this clock cancelled."""
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    @property
    def reading(self) -> int:
        """Requests whose body is being awaited now."""
        return len(self._reading)

    def _sweep(self) -> None:
        now = self.loop.time()
        late = [task for task, deadline in self._reading.items() if deadline <= now]
        for task in late:
            del self._reading[task]
            self._expired.add(task)
            task.cancel()
        self._timer = self.loop.call_later(self.tick, self._sweep) if self._reading else None
