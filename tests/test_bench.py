"""The benchmarks' own parts: what they send, how they read their tools, what they compare.

The benchmarks run by hand (`make bench`); these tests keep the pieces whose mistakes
would make a run wrong without failing it: a request hookledger would refuse, a
misread wrk or py-spy report, a ceiling that writes other rows than the hand loop.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from bench import rebuild
from bench.harness import SECRET, SIGNATURE_HEADER, make_body, parse_wrk, sign
from bench.ingest import CONFIG
from bench.profile import parse_raw_profile
from ledger.config import load_config
from ledger.recorder import make_engine
from ledger.signatures.registry import SCHEMES
from ledger.signatures.scheme import Delivery


def test_the_benchmark_delivery_passes_hookledgers_verification(tmp_path, monkeypatch):
    body = make_body()
    assert len(body) == 1024
    path = tmp_path / "bench.toml"
    path.write_text(
        CONFIG.format(
            url=f"sqlite:///{tmp_path}/l.db",
            server="",
            source="bench",
            secret_env="BENCH_WEBHOOK_SECRET",
            header=SIGNATURE_HEADER,
        )
    )
    monkeypatch.setenv("BENCH_WEBHOOK_SECRET", SECRET)
    source = load_config(str(path)).sources["bench"]
    assert source.event_id == "header:X-Event-Id"  # post.lua sends one per request
    headers = {SIGNATURE_HEADER.lower(): sign(body)}
    scheme = SCHEMES[source.verifier]
    verdict = scheme.verify(
        Delivery(headers, body, ""),
        source.secrets,
        time.time(),
        source.tolerance_seconds,
        source.signature_header,
    )
    assert verdict.ok
    tampered = Delivery(headers, body[:-2] + b'x"', "")
    assert not scheme.verify(tampered, source.secrets, time.time(), 300, source.signature_header).ok


def test_parse_wrk_reads_the_summary_line_of_post_lua():
    line = (
        'BENCH_JSON {"duration_us":2000000,"requests":5000,"bytes":1,'
        '"errors":{"connect":1,"read":2,"write":0,"status":7,"timeout":3},'
        '"latency_us":{"mean":1.5,"p50":1000,"p90":2000,"p99":9000,"max":12000},'
        '"statuses":{"202":4990,"503":10}}'
    )
    stats = parse_wrk(f"Running 2s test\n{line}\n", ["wrk"])
    assert stats.rps == 2500
    assert (stats.ok, stats.non_2xx) == (4990, 10)
    assert stats.errors == 6  # connect, read, write, timeout: not the status count
    assert stats.latency_us["p99"] == 9000


def test_parse_raw_profile_counts_own_total_and_python_frames_per_thread():
    raw = "\n".join(
        [
            "process 1:python;thread (0x1): MainThread;run (a.py);step (b.py) 5",
            "process 1:python;thread (0x1): MainThread;run (a.py);run (a.py);libc.so.6:write 3",
            "process 1:python;thread (0x2): hookledger-appender;_write (c.py) 2",
            "not a sample line",
        ]
    )
    samples, own, total, python_own, callers = parse_raw_profile(raw)
    assert samples == {"MainThread": 8, "hookledger-appender": 2}
    assert own["MainThread"]["libc.so.6:write"] == 3
    assert total["MainThread"]["a.py:run"] == 8  # a recursive frame counts once per sample
    assert python_own["MainThread"]["a.py:run"] == 3  # innermost Python frame under write
    assert callers["MainThread"]["libc.so.6:write"]["a.py:run"] == 3
    assert own["hookledger-appender"]["c.py:_write"] == 2


def test_the_rebuild_ceiling_writes_what_the_hand_loop_writes(db_url, monkeypatch):
    # 2,000 events over 300 keys, all in one chunk: each key changes six or seven times,
    # and the last change of each must win on both sides, and in hookledger's rebuild.
    monkeypatch.setattr(rebuild, "KEYS", 300)
    rebuild.generate(db_url, 2_000)
    hand = rebuild.hand_loop(db_url)
    ceiling = rebuild.set_based(db_url)
    engine_run = rebuild.hookledger_rebuild(db_url)
    assert hand["events"] == ceiling["events"] == engine_run["events"] == 2_000
    assert engine_run["rows"] == 300
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            columns = "entity, id, name, n, data, version, position, deleted"
            rows = {
                table: conn.execute(
                    text(f"SELECT {columns} FROM {table} ORDER BY entity, id")
                ).all()
                for table in ("hand_entities", "sql_entities")
            }
    finally:
        engine.dispose()
    assert len(rows["hand_entities"]) == 300
    assert [tuple(r) for r in rows["sql_entities"]] == [tuple(r) for r in rows["hand_entities"]]


def test_the_appender_benchmark_appends_what_it_measures(tmp_path):
    from bench.appender import measure
    from ledger.recorder import iter_events, make_engine

    url = f"sqlite:///{tmp_path / 'appender.db'}"
    cpu, wall = measure(url, prefill=512, count=56, batch=28, dedup_body=True)
    assert cpu > 0 and wall > 0
    engine = make_engine(url)
    try:
        rows = list(iter_events(engine))
    finally:
        engine.dispose()
    assert len(rows) == 512 + 56
    assert all(r.duplicate_of is None for r in rows)  # distinct ids and bodies


def test_the_scale_export_imports_and_projects_a_tenth_of_its_events(engine, tmp_path):
    from bench import scale
    from ledger.integrity import verify_ledger
    from ledger.transfer import import_lines
    from projections.adapters import load_adapters
    from projections.status import status
    from projections.worker import Worker
    from tests.projection_support import drain

    now = time.time_ns() // 1000
    lines = list(scale.export_lines(200, now))
    assert import_lines(engine, lines) == 200
    with engine.connect() as conn:
        sizes = {len(b) for (b,) in conn.execute(text("SELECT body FROM events"))}
        last = conn.execute(text("SELECT max(received_at_us) FROM events")).scalar()
    assert sizes == {scale.BODY_BYTES}
    assert last == now
    assert verify_ledger(engine).ok
    raw = load_config_text(tmp_path, scale.CONFIG.format(db=tmp_path / "x.db"))
    projectors = load_adapters(raw)
    drain(Worker(engine, projectors, owner="w"))
    (entry,) = status(engine, projectors)
    assert entry["rows"] == 20


def load_config_text(tmp_path, text_: str):
    path = tmp_path / "scale.toml"
    path.write_text(text_)
    return load_config(str(path), {})


def test_the_scale_table_reports_each_size_as_a_ratio_to_the_first():
    from bench import scale

    assert [scale.parse_size(s) for s in ("100k", "1M", "3M", "2500")] == [
        100_000,
        1_000_000,
        3_000_000,
        2500,
    ]
    results = {
        n: {name: n / 100_000 * 0.01 for name, _, _ in scale.REQUESTS} for n in (100_000, 1_000_000)
    }
    for n in results:
        results[n][scale.VERIFICATION] = n / 100_000 * 1.5
    table = scale.table([100_000, 1_000_000], results)
    assert "| request | 100k | 1M |" in table
    assert "| `GET /ui/` | 10.0 ms | 100.0 ms (10.00x) |" in table
    assert f"| `{scale.VERIFICATION}` | 1.50 s | 15.00 s (10.00x) |" in table


def test_rebuild_ingest_summary_counts_every_answer_but_202_and_the_tail():
    from bench.rebuild_ingest import summary

    samples = [(float(i), float(i + 1), 202) for i in range(100)]
    samples[10] = (10.0, 5000.0, 503)  # a stall and its error both show
    samples[11] = (11.0, 3.0, 0)  # a connection error is not a 202 either
    s = summary(samples)
    assert (s["deliveries"], s["non_202"], s["max_ms"]) == (100, 2, 5000.0)
    assert s["p50_ms"] == 51.5 and s["p99_ms"] == 5000.0  # 1..100 with 11, 12 replaced


def test_the_deliver_benchmark_hands_every_event_over_and_counts_them(tmp_path):
    # the benchmark's receiver counts what arrives; a destination run must reach exactly
    # the events it was given, and the bare client's ceiling as many requests
    from bench import deliver

    with deliver.receiver(tmp_path) as url:
        assert deliver.ceiling(url, [deliver.body(i) for i in range(50)], 4) > 0
        assert deliver.stats(url)["count"] == 50
        assert deliver.throughput(f"sqlite:///{tmp_path / 'd.db'}", url, 120, 4) > 0
        assert deliver.stats(url)["count"] == 170
        assert deliver.stats(url)["connections"] <= 8  # kept alive: 4 each
