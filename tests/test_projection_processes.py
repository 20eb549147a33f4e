"""Real `hookledger project` processes killed with SIGKILL at awkward moments (SPEC 5).

A killed worker must neither lose nor repeat an effect: the next worker takes
the lease over when it expires, resumes from the checkpoint, and the tables
end up equal to an independent fold of the log.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from ledger import migrate
from ledger.db import make_engine
from ledger.store import read_head
from projections import versions
from projections.schema import projection_errors, projection_leases
from projections.worker import LEASE_TTL_S, wait_until
from tests.helpers import append, new_event
from tests.projection_support import actual_entities, entities_toml, entity_body, expected_entities

ROOT = Path(__file__).resolve().parent.parent

ENTITIES = entities_toml('{ name = "/data/name", n = { path = "/data/n", type = "integer" } }')

COUNTS = """
[projections.counts]
class = "tests.projection_support:EventCounts"
"""


# --- processes -----------------------------------------------------------------------------


class Projectors:
    """Starts `hookledger project` processes (each in its own process group) and reaps them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def config(self, url: str, text_: str) -> Path:
        path = self.tmp_path / "hookledger.toml"
        path.write_text(f'database_url = "{url}"\n{text_}')
        return path

    def start(self, config: Path) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
        env["PYTHONPATH"] = str(ROOT)
        log = self.tmp_path / f"project-{len(self.procs)}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "project", "--config", str(config)],
                cwd=str(self.tmp_path),
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return self.logs[self.procs.index(proc)].read_text()[-3000:]

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM: the worker finishes its pass, releases its leases and exits 0."""
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0, self.log(proc)

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def projectors(tmp_path) -> Iterator[Projectors]:
    p = Projectors(tmp_path)
    yield p
    p.reap()


@pytest.fixture
def migrated() -> Iterator:
    """`migrated(url)`: a migrated engine, disposed at the end."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


# --- the registry, as the tests watch it ---------------------------------------------------


def checkpoint(engine: Engine, name: str) -> tuple[int, str | None]:
    """(position, status) of the version being worked: the build while one runs, else live."""
    with engine.connect() as conn:
        live, building = versions.active(conn, name)
    current = building or live
    return (0, None) if current is None else (current.position, current.status)


def head(engine: Engine) -> int:
    with engine.connect() as conn:
        return read_head(conn)[0]


def caught_up(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        live, building = versions.active(conn, name)
        position = read_head(conn)[0]
    return (
        building is None
        and live is not None
        and live.state == "running"
        and live.position == position
    )


def kill_mid_way(
    projectors: Projectors,
    proc: subprocess.Popen,
    engine: Engine,
    name: str,
    above: int,
    delay: float,
) -> int:
    """SIGKILL `proc` `delay` seconds after it committed a batch past `above` (so the kill
    lands inside the next batch's read, apply or commit); returns the checkpoint then."""
    deadline = time.monotonic() + 60
    while checkpoint(engine, name)[0] <= above:
        assert proc.poll() is None, projectors.log(proc)
        assert time.monotonic() < deadline, "the projector never committed a batch"
        time.sleep(0.005)
    time.sleep(delay)
    projectors.kill(proc)
    return checkpoint(engine, name)[0]


def errors_recorded(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(projection_errors)).scalar()


# --- event streams -------------------------------------------------------------------------


class EntityStream:
    """Generic-sync deliveries with stale versions, deletes and re-deliveries, and their log."""

    def __init__(self, seed: int, n_keys: int = 3000) -> None:
        self.rng = random.Random(seed)
        self.n_keys = n_keys
        self.deliveries: list[tuple[str, bytes, bool]] = []
        self.event_ids: list[str] = []

    def batch(self, size: int) -> list:
        out = []
        for _ in range(size):
            i = len(self.deliveries)
            if i and self.rng.random() < 0.05:  # a provider retry of an earlier event
                j = self.rng.randrange(max(0, i - 500), i)
                kind, body, _ = self.deliveries[j]
                event_id = self.event_ids[j]
                self.deliveries.append((kind, body, True))
            else:
                kind = "data_deleted" if self.rng.random() < 0.1 else "data_updated"
                body = entity_body(
                    kind,
                    self.rng.choice(["customer", "order"]),
                    str(self.rng.randrange(self.n_keys)),
                    self.rng.randrange(1, 30),
                    name=f"n{i}",
                    n=i,
                )
                event_id = f"evt-{i}"
                self.deliveries.append((kind, body, False))
            self.event_ids.append(event_id)
            out.append(new_event(body, event_id=event_id, event_type=kind))
        return out

    def append(self, engine: Engine, total: int, per_batch: int = 1000) -> None:
        for _ in range(total // per_batch):
            append(engine, self.batch(per_batch))


# --- (a) SIGKILL in the middle of a large backlog, both backends ---------------------------


def test_a_killed_projector_mid_backlog_loses_and_repeats_nothing(db_url, migrated, projectors):
    engine = migrated(db_url)
    stream = EntityStream(seed=1)
    stream.append(engine, 30_000)
    total = head(engine)
    config = projectors.config(db_url, ENTITIES)

    first = projectors.start(config)
    at_kill = kill_mid_way(projectors, first, engine, "entities", 0, delay=0.1)
    assert 0 < at_kill < total
    assert checkpoint(engine, "entities") == (at_kill, "building")  # the first build, unswapped

    second = projectors.start(config)
    assert wait_until(lambda: caught_up(engine, "entities"), 60), projectors.log(second)
    with engine.connect() as conn:
        assert actual_entities(conn) == expected_entities(stream.deliveries)
        (v1,) = versions.of(conn, "entities")
        assert (v1.version, v1.status, v1.position) == (1, "live", total)
    assert errors_recorded(engine) == 0
    projectors.stop(second)


# --- (b) two workers on PostgreSQL: the lease holder dies, the other takes over ------------


def lease_holders(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [
            (owner, int(owner.split(":")[1]))
            for owner in conn.execute(select(projection_leases.c.owner)).scalars()
        ]


def test_two_workers_fail_over_when_the_lease_holder_is_killed(pg_url, migrated, projectors):
    engine = migrated(pg_url)
    stream = EntityStream(seed=2, n_keys=500)
    stream.append(engine, 3000)
    config = projectors.config(pg_url, ENTITIES)
    workers = {p.pid: p for p in (projectors.start(config), projectors.start(config))}
    assert wait_until(lambda: caught_up(engine, "entities"), 30)
    start = head(engine)

    # events keep arriving the whole time; the checkpoint never moves backwards
    stop = threading.Event()
    problems: list[str] = []
    seen_owners: list[int] = []
    turns = [0]  # how many times the watcher has looked

    def keep_appending() -> None:
        while not stop.is_set():
            append(engine, stream.batch(20))
            time.sleep(0.01)

    def watch() -> None:
        last = 0
        while not stop.is_set():
            position, _ = checkpoint(engine, "entities")
            if position < last:
                problems.append(f"checkpoint went back from {last} to {position}")
            last = position
            holders = lease_holders(engine)
            if len(holders) != 1:
                problems.append(f"lease holders: {holders}")
            elif not seen_owners or seen_owners[-1] != holders[0][1]:
                seen_owners.append(holders[0][1])
            turns[0] += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=keep_appending), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        # the watcher has seen the holder apply events that arrived meanwhile
        assert wait_until(
            lambda: bool(seen_owners) and checkpoint(engine, "entities")[0] > start + 100, 15
        )
        ((_, holder),) = lease_holders(engine)
        assert holder in workers
        (other,) = set(workers) - {holder}
        assert all(p.poll() is None for p in workers.values())

        before_kill = checkpoint(engine, "entities")[0]
        projectors.kill(workers[holder])
        killed_at = time.monotonic()
        assert wait_until(lambda: [pid for _, pid in lease_holders(engine)] == [other], 15)
        took_over = time.monotonic() - killed_at
        assert took_over < LEASE_TTL_S + 3
        # the survivor works: the checkpoint moves past where the dead holder left it
        assert wait_until(lambda: checkpoint(engine, "entities")[0] > before_kill + 100, 10)
        watched = turns[0]  # and the watcher keeps checking the survivor a while
        assert wait_until(lambda: turns[0] >= watched + 20, 10)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert wait_until(lambda: caught_up(engine, "entities"), 30), projectors.log(workers[other])
    assert problems == []
    assert seen_owners == [holder, other]
    assert workers[other].poll() is None
    with engine.connect() as conn:
        assert actual_entities(conn) == expected_entities(stream.deliveries)
        (v1,) = versions.of(conn, "entities")
        assert (v1.status, v1.state) == ("live", "running")
    assert errors_recorded(engine) == 0
    projectors.stop(workers[other])
    assert lease_holders(engine) == []  # a clean stop releases the lease at once


# --- (c) a Python projection killed twice: every event counted exactly once ----------------


def test_python_projection_counts_once_across_two_kills(tmp_path, migrated, projectors):
    url = f"sqlite:///{tmp_path / 'counts.db'}"
    engine = migrated(url)
    rng = random.Random(3)
    expected: dict[str, int] = {}
    sent: list[tuple[str, str]] = []  # (event id, type) of every first delivery

    def deliver(n: int) -> None:
        for _ in range(n // 1000):
            batch = []
            for _ in range(1000):
                if sent and rng.random() < 0.1:
                    event_id, kind = rng.choice(sent[-300:])  # a re-delivery
                else:
                    event_id, kind = f"e{len(sent)}", rng.choice(["a", "b", "c", "d"])
                    sent.append((event_id, kind))
                    expected[kind] = expected.get(kind, 0) + 1
                batch.append(new_event(b"{}", event_id=event_id, event_type=kind))
            append(engine, batch)

    def counts() -> dict[str, int]:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT event_type, count FROM counts")).all())

    config = projectors.config(url, COUNTS)
    deliver(50_000)  # 5 batches of the first build, about 40 ms each
    first_head = head(engine)

    # killed during the first build (large batches)
    proc = projectors.start(config)
    at_kill = kill_mid_way(projectors, proc, engine, "counts", 0, delay=0.01)
    assert 0 < at_kill < first_head
    assert checkpoint(engine, "counts")[1] == "building"

    proc = projectors.start(config)
    assert wait_until(lambda: caught_up(engine, "counts"), 60), projectors.log(proc)
    assert counts() == expected
    projectors.stop(proc)

    # killed while the live version catches up on a new backlog (small batches)
    deliver(30_000)  # 30 live batches, about 10 ms each
    second_head = head(engine)
    proc = projectors.start(config)
    at_kill = kill_mid_way(projectors, proc, engine, "counts", first_head, delay=0.03)
    assert first_head < at_kill < second_head
    assert checkpoint(engine, "counts")[1] == "live"

    proc = projectors.start(config)
    assert wait_until(lambda: caught_up(engine, "counts"), 60), projectors.log(proc)
    assert counts() == expected
    assert sum(expected.values()) == len(sent) < second_head  # re-deliveries were skipped
    assert errors_recorded(engine) == 0
    projectors.stop(proc)
