"""Rejections are bounded (SPEC 3): a flood of bad signatures cannot fill the disk, the
newest are kept, and the counts per source and reason in /metrics stay exact whatever
was removed, across restarts and prunes. Real uvicorn, both backends."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import threading
import time

import httpx
from sqlalchemy import text

from ledger.recorder import Rejection, make_engine
from ledger.rejection_lane import RejectionLane
from tests.test_cli import run_cli

BOUND = 200_000
CONFIG = """
database_url = "{url}"

[server]
rejections_max_bytes = {bound}

[sources.app]
verifier = "hmac-sha256"
secret_env = "APP_SECRET"
signature_header = "X-Signature"
"""


def metric(server, name: str, labels: str = "") -> float | None:
    found = re.search(
        rf"^{name}{re.escape(labels)} (\S+)$", httpx.get(server.url + "/metrics").text, re.M
    )
    return float(found.group(1)) if found else None


def wait_for_metric(server, name: str, labels: str, expected: float, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while (value := metric(server, name, labels)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def table_state(url: str) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """(id, sequence number in the body, stored_bytes) of every row, and the usage row."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, body, stored_bytes FROM rejections ORDER BY id"))
            kept = [(i, int(bytes(b).split(b":")[1].split(b",")[0]), size) for i, b, size in rows]
            usage = conn.execute(text("SELECT bytes, rows, evicted FROM rejection_usage")).one()
    finally:
        engine.dispose()
    return kept, tuple(usage)


def forged(seq: int) -> bytes:
    return b'{"seq":%d,"pad":"%s"}' % (seq, b"p" * 2000)


def test_a_flood_of_bad_signatures_keeps_the_table_bounded_and_the_counts_exact(
    serve, db_url, tmp_path
):
    env = {"APP_SECRET": "s3cret"}
    server = serve(CONFIG.format(url=db_url, bound=BOUND), env=env)
    flood = 400
    failures: list[str] = []

    def sender(start: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for seq in range(start, flood - 1, 8):
                r = client.post("/hooks/app", content=forged(seq), headers={"X-Signature": "00"})
                if r.status_code != 401 or r.json()["error"] != "bad_signature":
                    failures.append(r.text)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    real = b'{"real":1}'
    signature = hmac.new(b"s3cret", real, hashlib.sha256).hexdigest()
    good = httpx.post(  # a real delivery amid the flood is stored as ever
        server.url + "/hooks/app", content=real, headers={"X-Signature": signature}
    )
    for t in threads:
        t.join()
    last = httpx.post(
        server.url + "/hooks/app", content=forged(flood - 1), headers={"X-Signature": "00"}
    )
    assert last.status_code == 401 and not failures, failures[:3]
    assert good.status_code == 202, good.text

    labels = '{reason="bad_signature",source="app"}'
    assert wait_for_metric(server, "hookledger_rejections_total", labels, flood) == flood
    unrecorded = metric(server, "hookledger_rejections_unrecorded_total", labels)
    kept, (total, rows, evicted) = table_state(db_url)
    sizes = [size for _, _, size in kept]
    assert sum(sizes) == total <= BOUND  # the running total is exact, and within the bound
    assert rows == len(kept) and evicted + rows + unrecorded == flood
    assert total > BOUND - max(sizes)  # removed only what the bound required
    assert kept[-1][1] == flood - 1  # the newest is kept ...
    sequences = [seq for _, seq, _ in kept]
    assert evicted > 0 and min(sequences) > 0  # ... the oldest were removed
    assert metric(server, "hookledger_rejections_stored_bytes") == total
    assert metric(server, "hookledger_rejections_stored") == rows
    assert metric(server, "hookledger_rejections_evicted_total") == evicted

    # The counts are kept in the database: a restart, then a prune of every row, keep them.
    server.stop()
    config = tmp_path / "again.toml"
    config.write_text(CONFIG.format(url=db_url, bound=BOUND))
    pruned = run_cli("rejections", "prune", "--all", "--config", str(config), cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert f"pruned {rows} rejections" in pruned.stdout.decode()
    assert table_state(db_url) == ([], (0, 0, evicted))
    again = serve(CONFIG.format(url=db_url, bound=BOUND), env=env)
    assert metric(again, "hookledger_rejections_total", labels) == flood
    r = httpx.post(again.url + "/hooks/app", content=forged(flood), headers={"X-Signature": "0"})
    assert r.status_code == 401
    assert wait_for_metric(again, "hookledger_rejections_total", labels, flood + 1) == flood + 1
    assert [seq for _, seq, _ in table_state(db_url)[0]] == [flood]


def rejection(n: int, body: bytes = b"x") -> Rejection:
    return Rejection("app", n, "bad_signature", None, None, "", "[]", body)


class _Waiter:
    def __init__(self, item: Rejection) -> None:
        self.item = item


def test_the_lane_drops_the_oldest_beyond_its_bound_and_counts_them():
    lane = RejectionLane(max_items=3, max_bytes=10_000)
    dropped_all = []
    for n in range(5):
        dropped, _ = lane.offer(_Waiter(rejection(n)))
        dropped_all += [w.item.received_at_us for w in dropped]
    assert dropped_all == [0, 1]
    taken, tally = lane.take(None)
    assert [w.item.received_at_us for w in taken] == [2, 3, 4]
    assert tally == {("app", "bad_signature"): [5, 2]}
    assert not lane
    lane.offer(_Waiter(rejection(5, b"y" * 6000)))  # by bytes: the newest always fits
    dropped, _ = lane.offer(_Waiter(rejection(6, b"z" * 6000)))
    assert [w.item.received_at_us for w in dropped] == [5]


def test_a_failed_write_loses_the_rows_never_the_counts(pg_url):
    """PostgreSQL refuses a NUL in text: that write fails, and its refusal is still
    counted (as unrecorded) with the next write."""
    from ledger import migrate
    from ledger.appender import Appender

    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    appender = Appender(engine)
    appender.start()
    poison = Rejection("app", 1, "bad_signature", None, None, "q=\x00", "[]", b"x")

    async def one_then_another() -> bool:
        failed = await appender.reject(poison)
        await appender.reject(rejection(2))  # written after the retry pause, or at stop
        return failed

    try:
        assert asyncio.run(one_then_another()) is False
    finally:
        appender.stop()
    with engine.connect() as conn:
        counts = conn.execute(
            text("SELECT source, reason, refused, unrecorded FROM rejection_counts")
        )
        assert [tuple(r) for r in counts] == [("app", "bad_signature", 2, 1)]
        assert conn.execute(text("SELECT received_at_us FROM rejections")).scalars().all() == [2]
    engine.dispose()
