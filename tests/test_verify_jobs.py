"""Verification as a job (SPEC 7): one at a time per database across processes, a request
arriving meanwhile joins it, `wait` bounds how long a request is held, and the progress
and the last result are kept in the database; on SQLite and PostgreSQL, over real HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time

import httpx
from sqlalchemy import func, insert, select

from ledger import migrate, verify_job
from ledger.recorder import make_engine
from ledger.recorder.schema import verifications
from projections.worker import wait_until
from tests.conftest import ROOT
from tests.helpers import append, new_event
from tests.test_console import csrf

SOURCES = """
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
"""
EVENTS = 30_000  # long enough a check that every request below arrives while it runs


def seed(url: str, count: int = EVENTS) -> None:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        for start in range(0, count, 2000):
            batch = range(start, min(start + 2000, count))
            append(engine, [new_event(b'{"n":%d}' % i, event_id=f"e{i}") for i in batch])
    finally:
        engine.dispose()


def jobs(url: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            query = select(verifications.c.id, verifications.c.state, verifications.c.start)
            return [tuple(r) for r in conn.execute(query.order_by(verifications.c.id))]
    finally:
        engine.dispose()


def test_concurrent_requests_on_two_servers_share_one_job(serve, db_url):
    """Eight POSTs at once, spread over two server processes on one database, start one
    job; each answers 202 with its progress at wait=0; GET then shows the result."""
    seed(db_url)
    config = f'database_url = "{db_url}"\n' + SOURCES
    servers = [serve(config), serve(config)]
    urls = [servers[i % 2].url + "/v1/ledger/verify?wait=0" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: httpx.post(u, timeout=30), urls))
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    docs = [a.json() for a in answers]
    assert len({d["id"] for d in docs}) == 1
    assert len(jobs(db_url)) == 1
    for doc in docs:
        assert doc["state"] == "running"
        assert (doc["from"], doc["head"], doc["total"]) == (1, EVENTS, EVENTS)
        assert 0 <= doc["checked"] <= EVENTS
        assert {"rate", "eta_seconds", "percent", "started_at"} <= set(doc)

    def finished() -> dict | None:
        doc = httpx.get(servers[1].url + "/v1/ledger/verify").json()
        return doc if doc["state"] == "finished" else None

    assert wait_until(finished, 120)
    last = finished()
    assert last is not None
    assert (last["ok"], last["checked"], last["head"]) == (True, EVENTS, EVENTS)
    assert last["id"] == docs[0]["id"] and last["finished_at"] >= last["started_at"]
    assert len(jobs(db_url)) == 1

    # with the default wait a request is answered the verdict of a new job, which
    # every other server then reports as the last result
    verdict = httpx.post(servers[0].url + "/v1/ledger/verify?from=29000", timeout=60)
    assert verdict.status_code == 200, verdict.text
    assert (verdict.json()["ok"], verdict.json()["checked"]) == (True, EVENTS - 29000 + 1)
    assert httpx.get(servers[1].url + "/v1/ledger/verify").json() == verdict.json()
    assert [state for _, state, _ in jobs(db_url)] == ["finished", "finished"]


def test_a_request_meanwhile_joins_and_gets_that_answer(serve, db_url):
    """While a job runs (here in the test's own process, as another node would), a POST
    with a long wait joins it whatever its `from` and is answered that job's verdict;
    the CLI joins it too, follows its progress, and records no job of its own."""
    seed(db_url, 2000)
    server = serve(f'database_url = "{db_url}"\n' + SOURCES)
    engine = make_engine(db_url)
    try:
        job, started = verify_job.claim(engine, 1, "another node")
        assert started
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting = pool.submit(
                httpx.post, server.url + "/v1/ledger/verify?from=5&wait=30", timeout=60
            )
            base = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
            cli = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "verify"],
                env={**base, "PYTHONPATH": str(ROOT), "HOOKLEDGER_DATABASE_URL": db_url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            cli_err = pool.submit(cli.stderr.readline)  # the CLI says it joined, first
            assert b"joining the verification" in cli_err.result(timeout=60)
            assert len(jobs(db_url)) == 1
            assert not waiting.done() and cli.poll() is None
            verify_job.run(engine, job)
            joined = waiting.result(timeout=30)
        out, err = cli.communicate(timeout=60)
    finally:
        engine.dispose()
    assert joined.status_code == 200, joined.text
    doc = joined.json()
    assert (doc["id"], doc["ok"], doc["from"], doc["checked"]) == (job.id, True, 1, 2000)
    assert doc["requested_by"] == "another node"
    assert cli.returncode == 0, err
    assert "chain intact: 2000 events checked" in out.decode()
    assert "joining" not in err.decode()  # said once, first (read above)
    assert len(jobs(db_url)) == 1


def test_the_cli_records_its_result(tmp_path, db_url):
    seed(db_url, 10)
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "verify", "--from", "3"],
        env={**base, "PYTHONPATH": str(ROOT), "HOOKLEDGER_DATABASE_URL": db_url},
        capture_output=True,
        check=False,
        cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert jobs(db_url) == [(1, "finished", 3)]
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            job = verify_job.latest(conn)
    finally:
        engine.dispose()
    assert job is not None and job.requested_by == "cli"
    assert (job.result["ok"], job.result["checked"], job.head) == (True, 8, 10)


def test_a_job_whose_process_died_is_abandoned_and_replaced(make_client, db_url):
    c = make_client(SOURCES)
    c.post("/hooks/app", content=b"{}", headers={"X-Event-Id": "a"})
    engine = make_engine(db_url)
    stale = time.time_ns() // 1000 - int((verify_job.STALE_SECONDS + 5) * 1e6)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(verifications).values(
                    running=1,
                    state="running",
                    start=1,
                    head=1,
                    checked=0,
                    started_at_us=stale,
                    heartbeat_us=stale,
                    owner="gone:1",
                )
            )
    finally:
        engine.dispose()
    running = c.get("/v1/ledger/verify").json()
    assert (running["id"], running["state"]) == (1, "running")
    verdict = c.post("/v1/ledger/verify").json()
    assert (verdict["id"], verdict["ok"], verdict["checked"]) == (2, True, 1)
    assert [state for _, state, _ in jobs(db_url)] == ["abandoned", "finished"]


def test_verify_parameters_and_an_empty_history(make_client, db_url):
    c = make_client(SOURCES)
    none = c.get("/v1/ledger/verify")
    assert none.status_code == 404 and none.json()["error"] == "not_found"
    for query in ("wait=-1", "wait=31", "wait=x", "from=0"):
        r = c.post("/v1/ledger/verify?" + query)
        assert r.status_code == 400, (query, r.text)
        assert set(r.json()) == {"error", "detail"}
    past = c.post("/v1/ledger/verify?from=3")  # the head is 0: position 1 is the next one
    assert past.status_code == 409 and past.json()["error"] == "past_head"
    assert "past the head (position 0)" in past.json()["detail"]
    assert c.post("/v1/ledger/verify?from=1&wait=0").status_code in (200, 202)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(verifications)).scalar() == 1
    finally:
        engine.dispose()


def test_the_console_shows_and_joins_the_databases_job(make_client, db_url):
    """The chain page reads the job from the database: a job another process runs is
    shown with its progress, "Verify now" joins it, and its verdict shows after."""
    c = make_client(SOURCES)
    for i in range(3):
        c.post("/hooks/app", content=b"{}", headers={"X-Event-Id": f"e{i}"})
    engine = make_engine(db_url)
    try:
        job, _ = verify_job.claim(engine, 1, "another node")
        html = c.get("/ui/chain").text
        assert "verifying: 0 / 3 events" in html
        assert c.get("/ui/chain.json").json()["running"] is True
        r = c.post("/ui/chain/verify", data={"csrf": csrf(html)}, follow_redirects=False)
        assert r.status_code == 303
        assert len(jobs(db_url)) == 1
        verify_job.run(engine, job)
    finally:
        engine.dispose()
    html = c.get("/ui/chain").text
    assert "intact" in html and "3 events checked" in html and "(by another node)" in html
    assert "chain verified" in c.get("/ui/").text
