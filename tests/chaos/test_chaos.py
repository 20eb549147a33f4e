"""Chaos on PostgreSQL (issue 8): processes die and the database restarts under load.

Two `hookledger serve` processes (each with its in-process projector) and two
`hookledger project` workers share one throwaway PostgreSQL database. Client threads
send generic-sync deliveries (re-deliveries and out-of-order versions included) to
both servers while a chaos thread SIGKILLs servers and workers at random (each is
started again), and restarts PostgreSQL itself once (`pg_ctl restart -m immediate`).

Afterwards: every acknowledged delivery is stored byte for byte at its position, the
positions are gap-free, the chain verifies, `duplicate_of` matches an independent
computation, the projection catches up with nothing failed and equals an independent
fold of the log, and a rebuild from the log gives the same rows.

The load runs HOOKLEDGER_CHAOS_SECONDS (default 20) seconds; `make chaos` runs 300.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from sqlalchemy import func, select

from ledger.config import load_config
from ledger.integrity import verify_ledger
from ledger.recorder import iter_events, make_engine
from projections import leases, versions
from projections.adapters import load_adapters
from projections.schema import projection_errors
from projections.status import status
from projections.worker import Worker
from tests.pg import free_port
from tests.projection_support import ENTITIES, actual_entities, entity_body, expected_entities

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("HOOKLEDGER_CHAOS_SECONDS", "20"))
SEED = int(os.environ.get("HOOKLEDGER_CHAOS_SEED", str(int(time.time()))))
CLIENTS = 8
MAX_REQUESTS = 400 * SECONDS  # a bound on the load besides time: ~10x what a run sends
REDELIVERY = 0.15  # share of requests that re-send an earlier event (same id, same bytes)


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def config_text(url: str) -> str:
    projection = "\n".join(f"{k} = {toml_value(v)}" for k, v in ENTITIES.items())
    return f"""database_url = "{url}"

[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"

[projections.entities]
source = "app"
{projection}
"""


# --- processes ---------------------------------------------------------------------------------


class Proc:
    """One `hookledger` process in its own process group, restartable, logging to a file."""

    def __init__(self, name: str, argv: list[str], directory: Path, port: int | None = None):
        self.name = name
        self.argv = argv
        self.directory = directory
        self.port = port
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.starts = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
        self.env["PYTHONPATH"] = str(ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"\n--- start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=str(self.directory),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int | None:
        """SIGTERM, then SIGKILL after 20 s; returns the exit code."""
        if not self.alive():
            return None if self.proc is None else self.proc.returncode
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def ready(self) -> bool:
        if self.port is None:
            return self.alive()
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.start()  # e.g. it started while the database was away and gave up
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def server(directory: Path, config: Path, i: int) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "api.cli", "serve", "--config", str(config)]
    return Proc(f"serve-{i}", [*argv, "--port", str(port)], directory, port)


def worker(directory: Path, config: Path, i: int) -> Proc:
    argv = [sys.executable, "-m", "api.cli", "project", "--config", str(config)]
    return Proc(f"project-{i}", argv, directory)


# --- what happened -----------------------------------------------------------------------------


@dataclass
class Ack:
    event_id: str
    body: bytes
    duplicate_of: int | None
    sent_at: float
    acked_at: float


@dataclass
class Record:
    acks: dict[int, Ack] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    sent: list[tuple[str, bytes]] = field(default_factory=list)  # (event id, body) ever sent
    kills: dict[str, int] = field(default_factory=lambda: {"serve": 0, "project": 0})
    unexpected_exits: list[tuple[str, int | None, float]] = field(default_factory=list)
    pg_restart: tuple[float, float] | None = None  # (started, back)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1


def client_loop(i: int, urls: list[str], record: Record, stop: threading.Event, until: float):
    rng = random.Random(SEED * 1000 + i)
    n = 0
    with httpx.Client(timeout=10) as http:
        while not stop.is_set() and time.monotonic() < until and n < MAX_REQUESTS / CLIENTS:
            n += 1
            with record.lock:
                earlier = (
                    rng.choice(record.sent) if record.sent and rng.random() < REDELIVERY else None
                )
            if earlier is not None:
                event_id, body = earlier
            else:
                kind = "data_deleted" if rng.random() < 0.15 else "data_updated"
                event_id = f"c{i}-{n}"
                body = entity_body(
                    kind,
                    rng.choice(["customer", "order"]),
                    str(rng.randrange(25)),
                    rng.randrange(1, 9),  # small range: stale and tied versions abound
                    name=f"c{i}-{n}",
                    n=n,
                )
                with record.lock:
                    record.sent.append((event_id, body))
            url = rng.choice(urls) + "/hooks/app"
            headers = {"X-Event-Id": event_id, "Content-Type": "application/json"}
            sent_at = time.monotonic()
            try:
                r = http.post(url, content=body, headers=headers)
            except httpx.HTTPError as e:  # not acknowledged: fine, whatever it was
                record.count(type(e).__name__)
                time.sleep(0.05)
                continue
            record.count(str(r.status_code))
            if r.status_code in (200, 202):
                doc = r.json()
                position = doc["position"]
                problem = None
                if r.headers.get("ledger-position") != str(position):
                    problem = f"Ledger-Position {r.headers.get('ledger-position')} != {position}"
                elif doc["duplicate"] != (r.status_code == 200):
                    problem = f"{r.status_code} with {doc}"
                ack = Ack(event_id, body, doc.get("duplicate_of"), sent_at, time.monotonic())
                with record.lock:
                    if problem is None and position in record.acks:
                        problem = f"position {position} acknowledged twice"
                    record.acks[position] = ack
                    if problem:
                        record.problems.append(problem)
            elif r.status_code == 503:
                if not r.headers.get("retry-after") or r.json().get("error") is None:
                    with record.lock:
                        record.problems.append(f"503 without Retry-After: {r.text}")
                time.sleep(0.05)
            else:
                with record.lock:
                    record.problems.append(f"{r.status_code}: {r.text[:300]}")


def wait_for_postgres(postgres, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(postgres.url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.1)


def chaos_loop(procs: list[Proc], postgres, record: Record, stop: threading.Event, until: float):
    rng = random.Random(SEED)
    restart_pg_at = time.monotonic() + (until - time.monotonic()) * 0.45
    kinds = ["serve", "project"]
    turn = 0
    while not stop.is_set() and time.monotonic() < until - 1.0:
        # anything that exited by itself (e.g. started while the database was away)
        for p in procs:
            if p.proc is not None and not p.alive():
                record.unexpected_exits.append((p.name, p.proc.returncode, p.started_at))
                p.start()
        if record.pg_restart is None and time.monotonic() >= restart_pg_at:
            started = time.monotonic()
            postgres.restart("immediate")
            wait_for_postgres(postgres)
            record.pg_restart = (started, time.monotonic())
            continue
        if stop.wait(rng.uniform(0.8, 2.2)):
            break
        kind = kinds[turn % 2]
        turn += 1
        candidates = [p for p in procs if p.name.startswith(kind) and p.alive()]
        if not candidates:
            continue
        victim = rng.choice(candidates)
        victim.kill()
        record.kills[kind] += 1
        stop.wait(rng.uniform(0.1, 0.8))
        victim.start()


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_chaos_under_load_keeps_every_promise(postgres, tmp_path):
    url = postgres.create_database()
    config = tmp_path / "hookledger.toml"
    config.write_text(config_text(url))
    servers = [server(tmp_path, config, i) for i in range(2)]
    workers = [worker(tmp_path, config, i) for i in range(2)]
    procs = [*servers, *workers]
    record = Record()
    engine = make_engine(url)
    try:
        for s in servers:  # one at a time: the first one migrates the database
            s.start()
            s.wait_ready()
        for w in workers:
            w.start()

        began = time.monotonic()
        until = began + SECONDS
        stop = threading.Event()
        urls = [s.url for s in servers]
        clients = [
            threading.Thread(target=client_loop, args=(i, urls, record, stop, until))
            for i in range(CLIENTS)
        ]
        chaos = threading.Thread(target=chaos_loop, args=(procs, postgres, record, stop, until))
        for t in [*clients, chaos]:
            t.start()
        try:
            for t in [*clients, chaos]:
                t.join(SECONDS + 120)
        finally:
            stop.set()
            for t in [*clients, chaos]:
                t.join(60)
        assert not any(t.is_alive() for t in [*clients, chaos]), "a load or chaos thread hung"
        load_seconds = time.monotonic() - began

        # Everyone back up; one more delivery through each server proves they serve.
        for p in procs:
            if not p.alive():
                record.unexpected_exits.append((p.name, p.proc.returncode, p.started_at))
                p.start()
        for s in servers:
            s.wait_ready()
            body = entity_body("data_updated", "customer", "final", 1, name=s.name, n=0)
            event_id = f"final-{s.name}"
            sent_at = time.monotonic()
            r = httpx.post(
                s.url + "/hooks/app", content=body, headers={"X-Event-Id": event_id}, timeout=30
            )
            assert r.status_code == 202, r.text
            record.acks[r.json()["position"]] = Ack(event_id, body, None, sent_at, sent_at)

        # --- the log ---------------------------------------------------------------------
        assert record.problems == [], record.problems[:20]
        assert record.pg_restart is not None, "the PostgreSQL restart never happened"
        rows = list(iter_events(engine))
        head = len(rows)
        assert [r.position for r in rows] == list(range(1, head + 1)), "positions have gaps"
        by_position = {r.position: r for r in rows}
        for position, ack in record.acks.items():
            row = by_position.get(position)
            assert row is not None, f"acknowledged position {position} is not in the log"
            assert row.body == ack.body, f"position {position} holds other bytes"
            assert (row.source, row.event_id) == ("app", ack.event_id), position
            assert row.duplicate_of == ack.duplicate_of, position
        first_seen: dict[str, int] = {}
        for row in rows:
            expected = first_seen.setdefault(row.event_id, row.position)
            assert row.duplicate_of == (None if expected == row.position else expected), row
        result = verify_ledger(engine)
        assert result.ok and result.checked == head, result

        # --- the projection: caught up, not stuck, equal to an independent fold ------------
        projectors = load_adapters(load_config(str(config), {}))
        deadline = time.monotonic() + 90
        entry = status(engine, projectors)[0]
        while not (entry["lag"] == 0 and entry["rebuild"] is None and entry["state"] == "live"):
            assert entry["state"] != "failed", entry
            assert time.monotonic() < deadline, f"the projection never caught up: {entry}"
            time.sleep(0.2)
            entry = status(engine, projectors)[0]
        catch_up_seconds = time.monotonic() - began - load_seconds
        assert (entry["head"], entry["position"]) == (head, head), entry
        with engine.connect() as conn:
            errors = conn.execute(select(func.count()).select_from(projection_errors)).scalar()
            assert errors == 0
            assert {r.event_type for r in rows} <= set(ENTITIES["types"])
            deliveries = [(r.event_type, r.body, r.duplicate_of is not None) for r in rows]
            expected_rows = expected_entities(deliveries)
            assert actual_entities(conn) == expected_rows
            live_before, _ = versions.active(conn, "entities")

        # --- a rebuild from the log gives the same rows ------------------------------------
        exits = {p.name: p.terminate() for p in procs}
        projector = projectors["entities"]
        rebuilt, started = versions.request_rebuild(engine, projector)
        assert started and rebuilt.version > live_before.version
        rebuilder = Worker(engine, projectors, owner="chaos-rebuild")
        deadline = time.monotonic() + 60  # a SIGKILLed holder's lease expires within seconds
        while True:
            busy = rebuilder.run_once()
            with engine.connect() as conn:
                live, building = versions.active(conn, "entities")
            if building is None and live.version == rebuilt.version:
                break
            assert time.monotonic() < deadline, f"the rebuild never finished: {live} {building}"
            if not busy:
                time.sleep(0.2)
        leases.release_lease(engine, "entities", rebuilder.owner)
        with engine.connect() as conn:
            assert actual_entities(conn) == expected_rows
            assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 0}
        entry = status(engine, projectors)[0]
        assert (entry["state"], entry["lag"], entry["version"]) == ("live", 0, rebuilt.version)

        # --- processes: none died on its own, except when started as PostgreSQL went away --
        pg_started, pg_back = record.pg_restart
        for name, code, started_at in record.unexpected_exits:
            assert pg_started - 5 <= started_at <= pg_back + 1, (name, code, started_at)

        for p in procs:  # every failure was handled: logged in a line, never a traceback
            assert "Traceback" not in p.log.read_text(errors="replace"), p.tail()

        recovered = [a.acked_at for a in record.acks.values() if a.sent_at >= pg_back]
        summary = {
            "seconds": round(load_seconds, 1),
            "seed": SEED,
            "head": head,
            "acknowledged": len(record.acks),
            "duplicates_acknowledged": sum(
                a.duplicate_of is not None for a in record.acks.values()
            ),
            "answers": dict(sorted(record.statuses.items())),
            "kills": record.kills,
            "unexpected_exits": [(n, c) for n, c, _ in record.unexpected_exits],
            "pg_down_seconds": round(pg_back - pg_started, 2),
            "pg_first_ack_after_restart_seconds": round(min(recovered) - pg_started, 2)
            if recovered
            else None,
            "projection_catch_up_seconds": round(catch_up_seconds, 1),
            "rows": len(expected_rows),
            "sigterm_exit_codes": exits,
        }
        print("chaos summary:", json.dumps(summary))
        (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))
        assert recovered, "nothing was acknowledged after PostgreSQL came back"
        assert min(recovered) - pg_back < 30, summary
        if SECONDS >= 15:
            assert record.kills["serve"] >= 2 and record.kills["project"] >= 2, summary
        assert len(record.acks) >= 100, summary
    finally:
        for p in procs:
            p.kill()
        engine.dispose()
