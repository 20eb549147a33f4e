"""The destination guarantee, on both backends: with a receiver failing at random and
the delivery processes SIGKILLed at random while events keep arriving, every matching
event is delivered at least once, never before an earlier event of its key, and again
only when a crash lost the record of a delivery that had succeeded; a replay from a
position hands over exactly the events from there, in order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from destinations import store
from ledger import migrate
from ledger.recorder import make_engine, read_head
from projections.schema import delivery_attempts
from tests.conftest import write_config
from tests.helpers import append, new_event
from tests.receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEYS = [f"k{i}" for i in range(12)]


def config_text(db_url: str, receiver_url: str) -> str:
    return f"""
database_url = "{db_url}"

[destinations.out]
url = "{receiver_url}"
secret_env = "OUT_SECRET"
order = "key"
key = "/key"
concurrency = 4
start = "beginning"
retry_seconds = [0.05, 0.1]
max_attempts = 1000
timeout_seconds = 2
types = ["thing.*"]
"""


def start_worker(config: Path) -> subprocess.Popen:
    with open(config.parent / "project.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "project", "--config", str(config)],
            env={**os.environ, "OUT_SECRET": SECRET},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(config.parent),
            start_new_session=True,
        )


@pytest.mark.slow
def test_at_least_once_in_key_order_through_failures_and_kills(db_url, tmp_path):
    rng = random.Random(15)
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    wanted: list[int] = []  # positions the destination must hand over
    key_of: dict[int, str] = {}

    def add(batch: int) -> None:
        items = []
        for _ in range(batch):
            key = rng.choice(KEYS)
            kind = rng.choice(["thing.updated", "thing.updated", "other.noise"])
            items.append((key, kind, rng.random()))
        done = append(
            engine,
            [
                new_event(orjson.dumps({"key": k, "n": n}), event_type=t, event_id=None)
                for k, t, n in items
            ],
        )
        for row, (key, kind, _) in zip(done, items, strict=True):
            if kind.startswith("thing."):
                wanted.append(row.position)
                key_of[row.position] = key

    # the receiver fails one delivery in five, and sometimes answers slowly
    def plan(position: int, seen: int) -> str:
        draw = rng.random()
        return "fail" if draw < 0.2 else "close" if draw < 0.25 else "ok"

    kills = 0
    with Receiver(SECRET, plan) as receiver:
        config = write_config(tmp_path / "hookledger.toml", config_text(db_url, receiver.url))
        workers = [start_worker(config), start_worker(config)]
        try:
            for _ in range(12):
                add(rng.randint(10, 40))
                time.sleep(rng.uniform(0.1, 0.5))
                victim = rng.randrange(len(workers))
                os.killpg(workers[victim].pid, signal.SIGKILL)
                workers[victim].wait(10)
                kills += 1
                workers[victim] = start_worker(config)
            add(30)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if set(receiver.positions()) >= set(wanted):
                    break
                time.sleep(0.2)
            delivered = receiver.positions()
            assert set(delivered) >= set(wanted), (
                f"missing: {sorted(set(wanted) - set(delivered))[:20]}; "
                + (config.parent / "project.log").read_text()[-3000:]
            )
            assert set(delivered) <= set(wanted)  # the filter held
            assert all(d.verified for d in receiver.deliveries)

            # within a key, the first delivery of each event comes in position order
            firsts: dict[str, list[int]] = defaultdict(list)
            seen: set[int] = set()
            for position in delivered:
                if position not in seen:
                    seen.add(position)
                    firsts[key_of[position]].append(position)
            for key, order in firsts.items():
                assert order == sorted(order), (key, order)

            # wait until the checkpoint covers the whole log, then compare records
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    head = read_head(conn)[0]
                    position = conn.execute(
                        select(store.D.c.position).where(store.D.c.name == "out")
                    ).scalar()
                if position == head:
                    break
                time.sleep(0.2)
            assert position == head
            with engine.connect() as conn:
                recorded = Counter(
                    dict(
                        conn.execute(
                            select(delivery_attempts.c.position, func.count())
                            .where(delivery_attempts.c.outcome == "delivered")
                            .group_by(delivery_attempts.c.position)
                        ).all()
                    )
                )
            received = Counter(delivered)
            # a success once recorded is never handed over again
            assert max(recorded.values()) == 1, [p for p, n in recorded.items() if n > 1]
            # a second delivery happens only where a kill lost a success's record
            lost = sum(received[p] - recorded[p] for p in received)
            assert lost <= kills * 4, (lost, kills)  # at most `concurrency` per kill
            for p in received:
                assert received[p] - recorded[p] <= kills

            # replay from a position: exactly the wanted events from there, in order
            before = len(receiver.positions())
            start = wanted[len(wanted) // 2]
            receiver.plan = lambda position, seen: "ok"
            store.replay(engine, "out", start)
            again = [p for p in wanted if p >= start]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(receiver.positions()) < before + len(again):
                time.sleep(0.1)
            replayed = receiver.positions()[before:]
            assert sorted(set(replayed)) == again
            replay_firsts: dict[str, list[int]] = defaultdict(list)
            for p in dict.fromkeys(replayed):
                replay_firsts[key_of[p]].append(p)
            for key, order in replay_firsts.items():
                assert order == sorted(order), (key, order)
        finally:
            for w in workers:
                if w.poll() is None:
                    os.killpg(w.pid, signal.SIGTERM)
                    try:
                        w.wait(20)
                    except subprocess.TimeoutExpired:
                        os.killpg(w.pid, signal.SIGKILL)
            engine.dispose()
