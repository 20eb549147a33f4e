"""Real server processes: acknowledged means stored, whatever happens next."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from ledger.integrity import verify_ledger
from ledger.recorder import append_batch, get_event, iter_events, make_engine, writer
from tests.helpers import new_event

CONFIG = """
database_url = "{url}"
[sources.app]
verifier = "hmac-sha256"
secret_env = "APP_SECRET"
signature_header = "X-Signature"
event_id = "header:X-Event-Id"
"""
SECRET = "crash-test-secret"


def signed(body: bytes, event_id: str) -> dict[str, str]:
    import hmac

    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Signature": sig, "X-Event-Id": event_id, "Content-Type": "application/json"}


def test_sigkill_mid_burst_loses_no_acknowledged_delivery(serve, db_url):
    server = serve(CONFIG.format(url=db_url), env={"APP_SECRET": SECRET})
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                body = b'{"worker":%d,"n":%d,"pad":"%s"}' % (worker, n, b"x" * (n % 700))
                try:
                    r = client.post(
                        "/hooks/app", content=body, headers=signed(body, f"{worker}-{n}")
                    )
                except httpx.HTTPError:
                    return  # the server died under us: this one was never acknowledged
                if r.status_code == 202:
                    with lock:
                        acked[r.json()["position"]] = body

    with ThreadPoolExecutor(16) as pool:
        for w in range(16):
            pool.submit(sender, w)
        deadline = time.monotonic() + 20
        while len(acked) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # SIGKILL, mid-burst
        stop.set()

    assert len(acked) >= 400
    engine = make_engine(db_url)
    rows = {r.position: r for r in iter_events(engine)}
    assert sorted(rows) == list(range(1, len(rows) + 1))  # gap-free
    for position, body in acked.items():
        assert rows[position].body == body
    assert verify_ledger(engine).ok
    engine.dispose()


def test_two_api_processes_keep_positions_in_commit_order(serve, pg_url):
    """A slow writer holds its batch open; a tailing reader must never see a gap."""
    env = {"APP_SECRET": SECRET}
    a = serve(CONFIG.format(url=pg_url), env=env)
    b = serve(CONFIG.format(url=pg_url), env=env)
    engine = make_engine(pg_url)
    seen: list[int] = []
    problems: list[str] = []
    done = threading.Event()

    def tail() -> None:
        with httpx.Client(base_url=a.url, timeout=10) as client:
            while True:
                last = seen[-1] if seen else 0
                page = client.get("/v1/events", params={"after": last, "limit": 1000}).json()
                positions = [e["position"] for e in page["events"]]
                if positions and positions != list(range(last + 1, last + 1 + len(positions))):
                    problems.append(f"after {last} the reader saw {positions[:5]}...")
                seen.extend(positions)
                if done.is_set() and not positions:
                    return
                time.sleep(0.005)

    def post(server, i: int) -> int:
        body = b'{"i":%d}' % i
        r = httpx.post(
            server.url + "/hooks/app", content=body, headers=signed(body, str(i)), timeout=30
        )
        assert r.status_code == 202, r.text
        return r.json()["position"]

    reader = threading.Thread(target=tail)
    reader.start()
    with ThreadPoolExecutor(8) as pool:
        warmup = list(pool.map(lambda i: post((a, b)[i % 2], i), range(40)))
        # The slow writer: takes the head lock, appends, and waits before committing.
        with writer(engine.connect()) as conn, conn.begin():
            slow = append_batch(conn, [new_event(b"slow writer")])
            during = [pool.submit(post, (a, b)[i % 2], 100 + i) for i in range(40)]
            time.sleep(1.5)
            assert not any(f.done() for f in during), "writers must queue behind the head lock"
        later = [f.result() for f in during]
    done.set()
    reader.join(30)

    assert problems == []
    total = len(warmup) + 1 + len(later)
    assert seen == list(range(1, total + 1))
    assert slow[0].position == len(warmup) + 1
    assert min(later) > slow[0].position
    with engine.connect() as conn:
        assert get_event(conn, slow[0].position).body == b"slow writer"
    assert verify_ledger(engine).ok
    engine.dispose()
