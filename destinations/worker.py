"""The delivery loop: every destination this process can lease, handed over on one
asyncio loop in its own thread.

A `Dispatcher` per destination holds its lease, reads the wanted events past its
checkpoint into a `Plan`, starts what the plan says is ready, and writes what came
of it (attempts, window, checkpoint) in one transaction per batch of outcomes: while
one write runs, the next outcomes gather. A receiver's answer lets the next event of
its key go at once; a crash before the write loses the records of the deliveries
since the last write (at most a write's worth), and those events are handed over again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from destinations import senders, store
from destinations.plan import Item, Plan, Result
from destinations.spec import Destination, load_handler
from ledger.errors import HookledgerError, StatementFailed
from ledger.recorder import read_head
from projections import leases
from projections.schema import destination_leases
from projections.worker import LEASE_TTL_S, WorkerThread, worker_id

log = logging.getLogger("hookledger.destinations")

IDLE_POLL_S = 1.0
LEASE_MARGIN_S = 1.0  # no attempt starts when the lease has less left than this
NOTICE_S = 0.25  # how soon an operator's action (pause, replay, ...) is taken in
WRITE_EVERY_S = 0.05  # outcomes gather this long between writes (one commit for many)


class DeliveryWorker:
    """Hands over to every destination it can lease, until stopped."""

    def __init__(
        self,
        engine: Engine,
        specs: dict[str, Destination],
        owner: str | None = None,
        lease_ttl: float = LEASE_TTL_S,
        idle_poll: float = IDLE_POLL_S,
    ) -> None:
        self.engine = engine
        for spec in specs.values():
            if not spec.configured:
                log.warning(
                    "destination %s is not configured: %s is unset, so nothing is sent",
                    spec.name,
                    spec.secret_env,
                )
        self.specs = {n: s for n, s in specs.items() if s.configured}
        self.owner = owner or worker_id()
        self.lease_ttl = lease_ttl
        self.idle_poll = idle_poll
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dispatchers: list[Dispatcher] = []
        self._stopping = threading.Event()

    def wake(self, *_: object) -> None:
        """New events are in the log (any thread)."""
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                loop.call_soon_threadsafe(self._poke_all)

    def _poke_all(self) -> None:
        for d in self.dispatchers:
            d.appended = True
            d.poke.set()

    def stop(self) -> None:
        self._stopping.set()
        self.wake()

    def run(self) -> None:
        """Run the loop in this thread until `stop()`."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.dispatchers = [Dispatcher(self, spec) for spec in self.specs.values()]
        log.info("deliveries %s: %s", self.owner, ", ".join(self.specs) or "nothing")
        await asyncio.gather(*(d.run() for d in self.dispatchers))


class Dispatcher:
    """One destination's loop: lease, read ahead, start, record."""

    def __init__(self, worker: DeliveryWorker, spec: Destination) -> None:
        self.worker = worker
        self.spec = spec
        self.engine = worker.engine
        self.poke = asyncio.Event()
        self.plan: Plan | None = None
        self.expected = 0  # the checkpoint as written
        self.lease_until = 0.0  # monotonic
        self.renew_at = 0.0
        self.writing: asyncio.Task | None = None
        # Attempts go to `in_flight_max` long-lived senders through `queue`, each with
        # its own connection: a task per attempt cost half as much again per request.
        self.queue: asyncio.Queue[tuple[Plan, Item]] = asyncio.Queue()
        self.sends = 0  # attempts queued or in flight
        self.stale = False  # the plan's generation is not the destination's any more
        self.appended = True  # the log may have grown since the last read
        self.more = False  # the last read stopped short of the head
        self.read_at = 0.0  # monotonic: read again by then even without a wake-up
        self.notice_at = 0.0  # monotonic: compare the plan with the row again by then
        self.handler: Callable[..., Any] | None = None

    @property
    def stopping(self) -> bool:
        return self.worker._stopping.is_set()

    async def run(self) -> None:
        connections: list[senders.Connection | None] = [None] * self.spec.in_flight_max
        if self.spec.handler is not None:
            self.handler = load_handler(self.spec.handler, f"destinations.{self.spec.name}")
        else:
            connections = [senders.Connection(self.spec) for _ in connections]
        lanes = [asyncio.create_task(self._sender(c)) for c in connections]
        try:
            while not self.stopping:
                try:
                    timeout = await self.step()
                except StatementFailed:
                    log.exception("%s: delivery pass failed, retrying", self.spec.name)
                    timeout = self.worker.idle_poll
                except HookledgerError as e:
                    log.warning("%s: delivery pass failed, retrying: %s", self.spec.name, e)
                    timeout = self.worker.idle_poll
                except Exception:
                    log.exception("%s: delivery pass failed unexpectedly", self.spec.name)
                    timeout = self.worker.idle_poll
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.poke.wait(), timeout)
                self.poke.clear()
            await self._drain()
        finally:
            for lane in lanes:
                lane.cancel()
            for connection in connections:
                if connection is not None:
                    await connection.aclose()

    async def _drain(self) -> None:
        """At stop: let what is in flight finish, write it, give the lease back."""
        deadline = time.monotonic() + self.spec.timeout_seconds + 1
        while self.sends and time.monotonic() < deadline:
            self.poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poke.wait(), 0.1)
        if self.writing is not None:
            await self.writing
        with contextlib.suppress(Exception):
            await self._write()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                leases.release_lease,
                self.engine,
                self.spec.name,
                self.worker.owner,
                destination_leases,
            )

    # --- one pass ---------------------------------------------------------------------

    async def step(self) -> float:
        """One pass; returns how long to wait for a poke before the next one."""
        now = time.monotonic()
        if now >= self.renew_at:
            await self._hold(now)
        if now >= self.lease_until:
            return max(self.renew_at - now, 0.01)
        plan = self.plan
        if plan is None:
            plan = await self._load(fresh=True)
        elif self.stale and not self.sends and self.writing is None:
            await self._write()  # what the old plan still holds: its attempts are kept
            plan = await self._load(fresh=False)
        elif now >= self.notice_at:
            await self._take_notice(plan)
            self.notice_at = now + NOTICE_S
        if self.stale:
            pass  # nothing new starts until the plan is read again
        elif (self.appended or self.more or now >= self.read_at) and plan.room() > 0:
            self.appended = False
            self.read_at = now + self.worker.idle_poll
            self.more = await self._read_ahead(plan)
        self._start(plan)
        if self.writing is None and (plan.journal or plan.target() != self.expected):
            self.writing = asyncio.create_task(self._write_then_poke())
        if self.more and plan.room() > 0 and not self.stale:
            return 0.0
        wait = min(self.worker.idle_poll, max(self.renew_at - time.monotonic(), 0.01))
        at = plan.next_at()
        if at is not None:
            wait = min(wait, max(at - time.time(), 0.0))
        return wait

    def _start(self, plan: Plan) -> None:
        """Start what the plan says is ready, while the lease has time left."""
        if self.stale or plan is not self.plan:
            return
        if time.monotonic() >= self.lease_until - LEASE_MARGIN_S:
            return
        for item in plan.ready(time.time()):
            self.sends += 1
            self.queue.put_nowait((plan, item))

    async def _hold(self, now: float) -> bool:
        held = await asyncio.to_thread(
            leases.acquire_lease,
            self.engine,
            self.spec.name,
            self.worker.owner,
            self.worker.lease_ttl,
            destination_leases,
        )
        if not held:
            if self.plan is not None:
                log.info("%s: another worker holds it now", self.spec.name)
            self.plan, self.stale = None, False
            self.lease_until = 0.0
            self.renew_at = now + self.worker.lease_ttl / 3  # not on every wake-up
            return False
        self.lease_until = now + self.worker.lease_ttl
        self.renew_at = now + self.worker.lease_ttl / 3
        return True

    async def _take_notice(self, plan: Plan) -> None:
        """Compare the plan with the destination's row: a new generation (a replay, a
        retry, a skip) makes the plan stale; new notices (pause, resume, redeliver) are
        taken in as they are."""

        def read() -> tuple[Any, list[Item]]:
            with self.engine.connect() as conn:
                marks = store.marks_of(conn, self.spec.name)
                if marks is None or marks.notices == plan.notices:
                    return marks, []
                wanted = [p for p in store.redeliveries(conn, self.spec.name)]
                extras = [store.read_one(conn, self.spec, p) for p in wanted]
            return marks, [i for i in extras if i is not None and i.position not in plan.extras]

        marks, extras = await asyncio.to_thread(read)
        if marks is None or marks.generation != plan.generation:
            self.stale = True
            return
        if marks.notices != plan.notices:
            plan.notices = marks.notices
            if plan.state != "failed":
                plan.state = marks.state
            for item in extras:
                plan.add_extra(item)

    async def _load(self, fresh: bool) -> Plan:
        """A plan from the durable state; `fresh` (newly held) also fences the previous
        holder by moving the generation."""

        def load() -> tuple[Plan, list[Item]]:
            if fresh:
                store.ensure(self.engine, self.spec)
                saved = store.take_over(self.engine, self.spec.name)
            else:
                with self.engine.connect() as conn:
                    saved = store.saved(conn, self.spec.name)
            with self.engine.connect() as conn:
                extras = [store.read_one(conn, self.spec, p) for p in sorted(saved.redeliver)]
            return Plan(self.spec, saved), [i for i in extras if i is not None]

        plan, extras = await asyncio.to_thread(load)
        for item in extras:
            plan.add_extra(item)
        self.plan, self.stale, self.expected = plan, False, plan.checkpoint
        log.info(
            "%s: %s at position %d (%s)",
            self.spec.name,
            "holding" if fresh else "reloaded",
            plan.checkpoint,
            plan.state,
        )
        return plan

    async def _read_ahead(self, plan: Plan) -> bool:
        """Read the next wanted events into the plan; True when there is more to read."""
        room = min(plan.room(), store.READ_BATCH)

        def read() -> tuple[list[Item], int, int]:
            with self.engine.connect() as conn:
                head = read_head(conn)[0]
                if head <= plan.read_to:
                    return [], plan.read_to, head
                items = store.read(conn, self.spec, plan.read_to, head, room)
            read_to = items[-1].position if len(items) == room else head
            return items, read_to, head

        items, read_to, head = await asyncio.to_thread(read)
        plan.add(items, read_to)
        return read_to < head

    async def _sender(self, connection: senders.Connection | None) -> None:
        """One of the destination's senders: attempts, one after the other, until stopped."""
        while True:
            plan, item = await self.queue.get()
            try:
                if plan is self.plan and not self.stale:
                    await self._send(connection, plan, item)
                # else: the plan was given up (lease lost, a replay): its holder sends it
            finally:
                self.sends -= 1

    async def _send(self, connection: senders.Connection | None, plan: Plan, item: Item) -> None:
        try:
            if connection is not None:
                result = await connection.post(item)
            else:
                assert self.handler is not None
                result = await senders.call(self.handler, item)
        except Exception as e:  # a bug of ours: still an attempt, retried
            log.exception("%s: position %d", self.spec.name, item.position)
            now = time.time_ns() // 1000
            result = Result("failed", now, 0, None, f"{type(e).__name__}: {e}")
        plan.finished(item, result)
        self._start(plan)  # the next of its key (or another) goes now, not after the pass
        if result.outcome != "delivered":
            log.warning(
                "%s: position %d attempt %d failed: %s",
                self.spec.name,
                item.position,
                item.attempts or 1,
                result.error,
            )
        self.poke.set()

    async def _write_then_poke(self) -> None:
        try:
            if self.sends:  # more outcomes are coming: let them join this write
                await asyncio.sleep(WRITE_EVERY_S)
            await self._write()
        except HookledgerError as e:
            log.warning("%s: could not record deliveries, retrying: %s", self.spec.name, e)
            await asyncio.sleep(0.2)
        finally:
            self.writing = None
            self.poke.set()

    async def _write(self) -> None:
        """Write the plan's journal with its checkpoint; a refused write makes it stale."""
        plan = self.plan
        if plan is None:
            return
        journal, target = plan.take()
        if not journal and target == self.expected:
            return
        try:
            ok = await asyncio.to_thread(
                store.flush,
                self.engine,
                self.spec.name,
                plan.generation,
                self.expected,
                journal,
                target,
            )
        except BaseException:
            plan.journal = _merge(journal, plan.journal)  # nothing was written: keep it
            raise
        if ok:
            plan.written(target)
            self.expected = target
        else:
            self.stale = True


def _merge(old, new):
    """A journal that failed to write, followed by what came after it."""
    old.attempts += new.attempts
    old.window.update(new.window)
    old.dropped |= new.dropped
    old.dead += new.dead
    old.state = new.state or old.state
    for k, v in new.counts.items():
        old.counts[k] += v
    return old


def delivery_thread(worker: DeliveryWorker) -> WorkerThread:
    """The delivery worker in a background thread (`serve`, `project`)."""
    return WorkerThread(worker, name="hookledger-deliveries", join_s=20)
