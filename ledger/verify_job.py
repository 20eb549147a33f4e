"""Verification as a job: one at a time per database, its progress and result kept there.

A full verification reads the whole log, so it must not run once per request or
hold one open. `claim` starts a job unless one is running (the unique `running`
column of `verifications` makes that true across processes) and otherwise hands
back the running one, which the caller joins. `run` does the work in the caller's
thread, writing the progress to the job's row about twice a second (its heartbeat)
and the verdict at the end. A job whose heartbeat stopped (its process died) is
marked abandoned by the next claim, which then starts afresh.

The API (`POST /v1/ledger/verify`), the console's "Verify now" and the CLI's
`verify` all go through here, so they share one job and one last result.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy import exc as sa_exc

from ledger.errors import HookledgerError
from ledger.integrity import VerifyResult, verify_ledger
from ledger.recorder import read_head, translated, writer
from ledger.recorder.schema import verifications as jobs
from ledger.timefmt import iso_from_us

log = logging.getLogger("hookledger.verify")

HEARTBEAT_SECONDS = 0.5  # progress written at most this often
STALE_SECONDS = 30.0  # a running job silent for longer is abandoned


def now_us() -> int:
    return time.time_ns() // 1000


def owner_name() -> str:
    """Who runs a job, for people reading the table: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Job:
    """One verification: its range, progress and, once done, its result."""

    id: int
    state: str
    start: int
    head: int
    checked: int
    started_at_us: int
    heartbeat_us: int
    finished_at_us: int | None
    requested_by: str | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, row: Row) -> Job:
        return cls(
            row.id,
            row.state,
            row.start,
            row.head,
            row.checked,
            row.started_at_us,
            row.heartbeat_us,
            row.finished_at_us,
            row.requested_by,
            None if row.result is None else orjson.loads(row.result),
        )

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def total(self) -> int:
        return max(self.head - self.start + 1, 0)

    def doc(self, at_us: int | None = None) -> dict[str, Any]:
        """The answer of the API: progress while running (checked, total, rate, ETA),
        else the verdict, with the range it covered and when."""
        base = {
            "id": self.id,
            "state": self.state,
            "from": self.start,
            "head": self.head,
            "started_at": iso_from_us(self.started_at_us),
            "requested_by": self.requested_by,
        }
        if self.running:
            elapsed = max(((at_us or now_us()) - self.started_at_us) / 1e6, 1e-3)
            rate = self.checked / elapsed
            remaining = max(self.total - self.checked, 0)
            return {
                **base,
                "checked": self.checked,
                "total": self.total,
                "percent": round(100.0 * self.checked / self.total, 1) if self.total else 100.0,
                "rate": round(rate, 1),
                "eta_seconds": round(remaining / rate, 1) if rate > 0 else None,
            }
        finished = None if self.finished_at_us is None else iso_from_us(self.finished_at_us)
        return {**base, **(self.result or {}), "finished_at": finished}


def _select_running():
    return select(jobs).where(jobs.c.running == 1)


def claim(engine: Engine, start: int, requested_by: str | None) -> tuple[Job, bool]:
    """The running job, and True when this call started it (False: join it)."""
    for _ in range(3):
        try:
            with translated(), writer(engine.connect()) as conn, conn.begin():
                return _claim(conn, start, requested_by)
        except sa_exc.IntegrityError:
            continue  # another process started one between our read and our insert
    with translated(), engine.connect() as conn:
        row = conn.execute(_select_running()).first()
    if row is None:
        raise HookledgerError("could not start a verification: retry")
    return Job.of(row), False


def _claim(conn: Connection, start: int, requested_by: str | None) -> tuple[Job, bool]:
    now = now_us()
    conn.execute(
        update(jobs)
        .where(jobs.c.running == 1, jobs.c.heartbeat_us < now - int(STALE_SECONDS * 1e6))
        .values(
            running=None,
            state="abandoned",
            finished_at_us=now,
            result=orjson.dumps({"error": "abandoned: its process stopped"}).decode(),
        )
    )
    row = conn.execute(_select_running()).first()
    if row is not None:
        return Job.of(row), False
    head, _ = read_head(conn)
    values = {
        "running": 1,
        "state": "running",
        "start": start,
        "head": head,
        "checked": 0,
        "started_at_us": now,
        "heartbeat_us": now,
        "owner": owner_name(),
        "requested_by": requested_by,
    }
    job_id = conn.execute(insert(jobs).values(**values).returning(jobs.c.id)).scalar_one()
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
    return Job.of(row), True


def read(engine: Engine, job_id: int) -> Job:
    """One job as it is now."""
    with translated(), engine.connect() as conn:
        return Job.of(conn.execute(select(jobs).where(jobs.c.id == job_id)).one())


def latest(conn: Connection) -> Job | None:
    """The running job, else the last one, else None."""
    row = conn.execute(_select_running()).first()
    if row is None:
        row = conn.execute(select(jobs).order_by(jobs.c.id.desc()).limit(1)).first()
    return None if row is None else Job.of(row)


def run(engine: Engine, job: Job, tick: Callable[[int], None] | None = None) -> VerifyResult:
    """Do the job in this thread, recording progress and the verdict (or the error)."""
    progress = _Progress(engine, job.id, tick)
    try:
        result = verify_ledger(engine, job.start, progress.tick)
    except Exception as e:
        _finish(engine, job.id, "failed", progress.checked, {"ok": None, "error": str(e)})
        raise
    _finish(engine, job.id, "finished", progress.checked, result.as_dict())
    return result


def run_in_background(engine: Engine, job: Job) -> threading.Thread:
    """`run` in a daemon thread of this process (the API's and the console's jobs)."""

    def target() -> None:
        try:
            run(engine, job)
        except Exception as e:  # recorded on the job's row by `run`
            log.warning("verification %s failed: %s", job.id, e)

    thread = threading.Thread(target=target, name=f"hookledger-verify-{job.id}", daemon=True)
    thread.start()
    return thread


class _Progress:
    """Counts checked rows and writes them to the job's row at most every heartbeat."""

    def __init__(self, engine: Engine, job_id: int, tick: Callable[[int], None] | None) -> None:
        self.engine, self.job_id, self.outer = engine, job_id, tick
        self.checked = 0
        self.written_at = time.monotonic()

    def tick(self, n: int) -> None:
        self.checked += n
        if self.outer is not None:
            self.outer(n)
        if time.monotonic() - self.written_at >= HEARTBEAT_SECONDS:
            self.written_at = time.monotonic()
            try:
                with translated(), writer(self.engine.connect()) as conn, conn.begin():
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == self.job_id)
                        .values(checked=self.checked, heartbeat_us=now_us())
                    )
            except HookledgerError as e:  # progress is best effort; the check goes on
                log.warning("verification %s: progress not recorded: %s", self.job_id, e)


def _finish(engine: Engine, job_id: int, state: str, checked: int, result: dict) -> None:
    for attempt in range(5):
        try:
            with translated(), writer(engine.connect()) as conn, conn.begin():
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        running=None,
                        state=state,
                        checked=checked,
                        heartbeat_us=now_us(),
                        finished_at_us=now_us(),
                        result=orjson.dumps(result).decode(),
                    )
                )
            return
        except HookledgerError as e:
            log.warning("verification %s: result not recorded yet: %s", job_id, e)
            time.sleep(0.2 * (attempt + 1))
    log.error("verification %s: result could not be recorded", job_id)
