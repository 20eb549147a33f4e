"""Workers lose and repeat nothing (SIGKILL, crashes, lost leases); an error halts or skips."""

# A killed worker must neither lose nor repeat an effect: the next worker takes the lease
# over when it expires, resumes from the checkpoint, and the tables end up equal to an
# independent fold of the log.

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

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, text

from ledger import migrate
from ledger.recorder import make_engine, read_head
from projections import failures, leases, versions
from projections.adapters import DeclarativeAdapter
from projections.schema import projection_errors, projection_leases
from projections.status import status
from projections.worker import LEASE_TTL_S, Worker, wait_until
from tests.helpers import append, new_event
from tests.projection_support import (
    ENTITIES,
    actual_entities,
    drain,
    entities_toml,
    entity_body,
    expected_entities,
    projectors_for,
)

ROOT = Path(__file__).resolve().parent.parent

ENTITIES_CONFIG = entities_toml(
    '{ name = "/data/name", n = { path = "/data/n", type = "integer" } }'
)

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
        return conn.execute(select(func.count()).select_from(projection_errors)).scalar_one()


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
    config = projectors.config(db_url, ENTITIES_CONFIG)

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
    config = projectors.config(pg_url, ENTITIES_CONFIG)
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


# --- in process: crashes at random points, the error policy, leases ------------------------


entity_items = st.lists(
    st.tuples(
        st.sampled_from(["data_updated", "data_updated", "data_updated", "data_deleted"]),
        st.sampled_from(["customer", "order"]),
        st.sampled_from(["1", "2", "3", "4"]),
        st.integers(min_value=1, max_value=6),  # small range: many ties and stale updates
        st.booleans(),  # re-delivery of the same event id
    ),
    min_size=1,
    max_size=60,
)


class Crash(BaseException):
    """Stands for a process dying mid-transaction."""


class CrashingProjector(DeclarativeAdapter):
    def __init__(self, definition, rng: random.Random) -> None:
        super().__init__(definition)
        self.rng = rng

    def apply(self, conn, table, events):
        outcome = super().apply(conn, table, events)
        if self.rng.random() < 0.3:
            raise Crash()  # after writing rows, before commit
        return outcome


def load_stream(engine, items) -> list[tuple[str, bytes, bool]]:
    deliveries: list[tuple[str, bytes, bool]] = []
    seen: set[str] = set()
    for i, (kind, entity, key, version, redeliver) in enumerate(items):
        event_id = f"evt-{i - 1}" if redeliver and i > 0 else f"evt-{i}"
        body = (
            deliveries[i - 1][1]
            if redeliver and i > 0
            else entity_body(kind, entity, key, version, name=f"n{i}", n=i)
        )
        if redeliver and i > 0:
            kind = deliveries[i - 1][0]
        deliveries.append((kind, body, event_id in seen))
        seen.add(event_id)
        append(engine, [new_event(body, event_id=event_id, event_type=kind)])
    return deliveries


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=entity_items, batch=st.integers(min_value=1, max_value=7), seed=st.integers(0, 2**16))
def test_any_batching_any_crash_and_a_rebuild_agree(db_url_factory, items, batch, seed):
    engine = make_engine(db_url_factory())
    migrate.upgrade(engine)
    deliveries = load_stream(engine, items)
    expected = expected_entities(deliveries)
    projectors = projectors_for(entities=ENTITIES)

    # incremental, in small batches, crashing at random points
    definition = projectors["entities"].definition
    rng = random.Random(seed)
    crashing = {"entities": CrashingProjector(definition, rng)}
    owner = "w1"
    for _ in range(500):
        worker = Worker(engine, crashing, owner=owner, live_batch=batch, rebuild_batch=batch)
        try:
            drain(worker)
            break
        except Crash:
            continue
    with engine.connect() as conn:
        assert actual_entities(conn) == expected

    # a rebuild from position 1 in one large batch gives the same table
    versions.request_rebuild(engine, projectors["entities"])
    drain(Worker(engine, projectors, owner=owner))
    with engine.connect() as conn:
        assert actual_entities(conn) == expected
        live, building = versions.active(conn, "entities")
        assert building is None and live.version == 2
        assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 0}
    engine.dispose()


def test_python_projection_counts_each_event_once_across_crashes(engine):
    from tests.projection_support import EventCounts

    kinds = ["a", "b", "c"]
    rng = random.Random(7)
    bodies = []
    for i in range(300):
        kind = rng.choice(kinds)
        event_id = f"id-{i // 2}" if i % 10 == 0 else f"id-{i}"  # some redeliveries
        bodies.append((kind, event_id))
        append(engine, [new_event(b"{}", event_id=event_id, event_type=kind)])
    projectors = projectors_for(counts={"class": "tests.projection_support:EventCounts"})
    impl = projectors["counts"].impl
    real_apply = impl.apply
    calls = {"n": 0}

    def crashing_apply(conn, table, events):
        real_apply(conn, table, events)
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise Crash()

    impl.apply = crashing_apply
    for _ in range(1000):
        try:
            drain(Worker(engine, projectors, owner="w", live_batch=17, rebuild_batch=17))
            break
        except Crash:
            continue
    expected: dict[str, int] = {}
    seen = set()
    for kind, event_id in bodies:
        if event_id in seen:
            continue
        seen.add(event_id)
        expected[kind] = expected.get(kind, 0) + 1
    assert isinstance(EventCounts, type)
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT event_type, count FROM counts")).all())
    assert got == expected


def test_halt_records_the_error_and_stops_at_the_poison(engine):
    append(engine, [new_event(b'{"ok": 1}'), new_event(b"poison"), new_event(b'{"ok": 2}')])
    projectors = projectors_for(p={"class": "tests.projection_support:Poisoned"})
    worker = Worker(engine, projectors, owner="w")
    drain(worker)
    (entry,) = status(engine, projectors)
    assert entry["state"] == "failed"
    assert entry["position"] == 1
    assert entry["last_error"]["position"] == 2
    assert "poisoned event at 2" in entry["last_error"]["error"]
    # retrying without a fix halts again at the same event, and records it again
    assert failures.retry(engine, "p") == 1
    drain(worker)
    (entry,) = status(engine, projectors)
    assert (entry["state"], entry["position"]) == ("failed", 1)
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT position FROM projection_errors")).scalars().all()
    assert errors == [2, 2]


def test_skip_goes_past_the_poison(engine):
    append(engine, [new_event(b'{"ok": 1}'), new_event(b"poison"), new_event(b'{"ok": 2}')])
    projectors = projectors_for(
        p={"class": "tests.projection_support:Poisoned", "on_error": "skip"}
    )
    drain(Worker(engine, projectors, owner="w"))
    (entry,) = status(engine, projectors)
    assert (entry["state"], entry["position"], entry["rows"]) == ("live", 3, 2)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT position FROM p ORDER BY 1")).scalars().all() == [1, 3]


def test_a_worker_that_lost_its_lease_cannot_commit(engine):
    append(
        engine,
        [
            new_event(entity_body("data_updated", "c", str(i), 1), event_type="data_updated")
            for i in range(5)
        ],
    )
    projectors = projectors_for(entities=ENTITIES)
    a = Worker(engine, projectors, owner="a", live_batch=2, rebuild_batch=2, lease_ttl=0.0)
    b = Worker(engine, projectors, owner="b", live_batch=2, rebuild_batch=2, lease_ttl=0.0)
    a.run_once()  # creates v1 and applies 1..2
    with engine.connect() as conn:
        stale = versions.active(conn, "entities")[1]
    b.run_once()  # the lease expired at once: b takes over and applies 3..4
    # a still believes the checkpoint is where it saw it: its compare-and-set must fail
    assert a.step(projectors["entities"], stale, 5, 2) is False
    with engine.connect() as conn:
        assert versions.active(conn, "entities")[1].position == 4


def test_leases_give_each_projection_one_worker(engine):
    projectors = projectors_for(entities=ENTITIES)
    assert leases.acquire_lease(engine, "entities", "a", 5)
    assert not leases.acquire_lease(engine, "entities", "b", 5)
    assert leases.acquire_lease(engine, "entities", "a", 5)  # renewal
    leases.release_lease(engine, "entities", "a")
    assert leases.acquire_lease(engine, "entities", "b", 5)
    assert projectors
