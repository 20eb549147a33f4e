"""Issue 7's latency targets: catch-up (acknowledgement to readable) and point reads under load.

One run measures, each against a fresh server with the generic `entities`
projection (the server side, PostgreSQL included, pinned to one CPU; this
driver and wrk to the other):

1. **catch-up, SQLite**: `hookledger serve` with the projector in-process.
   Deliveries are sent one after another; after each 202 the driver asks
   `GET /v1/projections/entities/rows/customer/{id}?min_position=P`. The time
   from the 202 to that answer is what a read-your-writes client waits (one
   HTTP round trip included).
2. **catch-up, PostgreSQL**: the same against `hookledger serve --no-projector`
   on a throwaway PostgreSQL, with a separate `hookledger project` process
   woken by LISTEN/NOTIFY (the server polls the checkpoint every 10 ms while
   a `min_position` request waits).
3. **point reads under ingest**: the ceiling (bench/ceiling.py) and
   hookledger's own maximum are measured with wrk first; then wrk posts signed
   1 KiB deliveries (bench/post.lua, paced by a `delay()`) at fractions of
   min(half the ceiling, hookledger's maximum) to hookledger on SQLite with
   the projector in-process folding them, while the driver reads rows
   (`rows/customer/{id}`, no wait) on one keep-alive connection at a fixed,
   modest rate. The ingest rate reached during the reads is counted from the
   log's head, not taken from wrk.

Before each measurement the driver waits (a while) for a quiet machine and
reports the CPU that processes not its own took meanwhile: the machine is shared.

    python -m bench.latency --count 2000

Prints a Markdown table; results are recorded by hand in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    QUIET,  # cores taken by others above which a read window is tried again
    CpuMeter,
    free_port,
    hookledger_bin,
    server_env,
    serving,
    throwaway_postgres,
    wait_quiet,
)
from bench.latency_client import (
    SOURCE,
    Client,
    background,
    catch_up,
    entity_body,
    log_head,
    point_reads,
    serve_argv,
    write_config,
)
from bench.latency_load import Wrk, load_body

CATCH_UP_TARGET_MS = 50.0
READ_TARGET_MS = 5.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Row:
    """One line of the results table (milliseconds)."""

    scenario: str
    values: list[float]
    target_ms: float
    others: float  # cores other processes (and steal) took during the measurement

    @property
    def p99(self) -> float:
        return percentile(self.values, 99)

    def markdown(self) -> str:
        v = self.values
        met = "met" if self.p99 < self.target_ms else "**not met**"
        return (
            f"| {self.scenario} | {len(v):,} | {statistics.median(v):.2f} ms | {self.p99:.2f} ms "
            f"| {max(v):.1f} ms | < {self.target_ms:g} ms | {met} | {self.others:.2f} |"
        )


def ours(*others: int) -> Callable[[], list[int]]:
    """The processes to count as ours: this driver (its tree holds servers and wrk) + `others`.

    No pid twice: CpuMeter sums a duplicate twice at the start but once at the end."""
    return lambda: [os.getpid(), *others]


def measured(fn: Callable[[], list[float]], *others: int) -> tuple[list[float], float]:
    """`fn()` after waiting for a quiet machine, and the cores others took meanwhile."""
    wait_quiet(30)
    with CpuMeter(ours(*others)) as meter:
        values = fn()
    return values, meter.use.foreign


# --- scenarios ----------------------------------------------------------------


def sqlite_catch_up(args, workdir: Path) -> Row:
    config = write_config(workdir / "catch-up.toml", f"sqlite:///{workdir}/catch-up.db")
    port = free_port()
    argv = serve_argv(config, port)
    with serving(argv, server_env(), port, args.server_cpu, workdir / "a.log"):
        values, others = measured(lambda: catch_up(port, args.count))
    return Row("catch-up, SQLite, projector in-process", values, CATCH_UP_TARGET_MS, others)


def postgres_catch_up(args, workdir: Path, stack: contextlib.ExitStack) -> Row | None:
    started = throwaway_postgres(stack, args.server_cpu)
    if started is None:
        return None
    pg, postmaster = started
    config = write_config(workdir / "pg.toml", pg.create_database())
    port = free_port()
    project = [str(hookledger_bin()), "project", "--config", str(config)]
    with (
        serving(
            serve_argv(config, port, "--no-projector"),
            server_env(),
            port,
            args.server_cpu,
            workdir / "pg-serve.log",
        ),
        background(project, args.server_cpu, workdir / "pg-project.log") as projector,
    ):
        values, others = measured(lambda: catch_up(port, args.count), postmaster)
        assert projector.poll() is None, "hookledger project exited"
    scenario = "catch-up, PostgreSQL, separate `project` (LISTEN/NOTIFY)"
    return Row(scenario, values, CATCH_UP_TARGET_MS, others)


def reads_under_load(args, workdir: Path, wrk: Wrk) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    port = free_port()
    ceiling_argv = [sys.executable, "-m", "bench.ceiling", "--port", str(port)]
    with serving(ceiling_argv, server_env(), port, args.server_cpu, workdir / "ceiling.log"):
        wait_quiet(30)
        ceiling = wrk.maximum(port, args.max_seconds).rps
    db = workdir / "reads.db"
    config = write_config(workdir / "reads.toml", f"sqlite:///{db}")
    port = free_port()
    rows: list[Row] = []
    argv = serve_argv(config, port)
    with serving(argv, server_env(), port, args.server_cpu, workdir / "reads.log") as server:
        client = Client(port)
        for i in range(args.keys):
            position = client.deliver(entity_body(str(i), i))
        client.row(str(args.keys - 1), position)
        client.close()
        window = ReadWindow(args, port, db, server.pid, wrk)
        rows.append(window.best("point reads, no ingest", notes))
        wait_quiet(30)
        most = wrk.maximum(port, args.max_seconds)
        rate = min(ceiling / 2, most.rps)
        what = "half the ceiling" if rate < most.rps else "hookledger's maximum"
        notes.insert(
            0,
            f"ceiling {ceiling:,.0f} req/s (half: {ceiling / 2:,.0f}/s); hookledger, projector "
            f"in-process, {most.rps:,.0f} req/s unpaced (wrk p99 "
            f"{most.latency_us['p99'] / 1000:.1f} ms); ingest target: {what}, {rate:,.0f}/s",
        )
        for share in args.shares:
            wanted = rate * share
            delay = wrk.pace_for(port, wanted, most.rps, window.settle)
            label = f"{share:.0%} of {what}" if share != 1 else what
            rows.append(window.best(f"point reads, ingest at {label}", notes, (wanted, delay)))
        if args.profile:
            window.profile(notes, (rate, wrk.pace_for(port, rate, most.rps, window.settle)))
    return rows, notes


@dataclass
class ReadWindow:
    """Point reads for `args.read_seconds` on one server, optionally under wrk's ingest."""

    args: argparse.Namespace
    port: int
    db: Path
    pid: int
    wrk: Wrk

    def best(self, label: str, notes: list[str], load=None) -> Row:
        """The least disturbed of up to `args.attempts` windows (others' CPU under QUIET)."""
        tries = [self.once(label, load)]
        while tries[-1][0].others >= QUIET and len(tries) < self.args.attempts:
            tries.append(self.once(label, load))
        row, note = min(tries, key=lambda t: t[0].others)
        notes.append(
            f"{label}: {note}" + (f" (least disturbed of {len(tries)})" * (len(tries) > 1))
        )
        return row

    def settle(self) -> float:
        """Wait for the projector to apply the whole log (it lags after an unpaced run)."""
        with contextlib.closing(Client(self.port)) as client:
            return client.settle()

    def lag(self) -> int:
        with contextlib.closing(Client(self.port)) as client:
            return client.lag()

    def once(self, label: str, load) -> tuple[Row, str]:
        self.settle()
        wait_quiet(30)
        seconds = self.args.read_seconds + 4
        proc = self.wrk.start(self.port, seconds, load[1]) if load else None
        with CpuMeter(ours()) as meter:
            if proc is not None:
                time.sleep(2)  # let the load settle before reading
            head, began = log_head(self.db), time.perf_counter()
            values = point_reads(
                self.port, self.args.keys, self.args.read_seconds, self.args.read_rate
            )
            ingest = (log_head(self.db) - head) / (time.perf_counter() - began)
            lag = self.lag()
        note = f"{ingest:,.0f} deliveries/s during the reads, projection lag at their end {lag:,}"
        if proc is not None:
            stats = Wrk.finish(proc, seconds)
            wanted, delay = load
            paced = "unpaced" if delay is None else f"delay {delay:.2f} ms per connection"
            note += (
                f"; asked {wanted:,.0f}/s, wrk {paced}: {stats.rps:,.0f}/s over its run, "
                f"ingest p50 {stats.latency_us['p50'] / 1000:.1f} ms p99 "
                f"{stats.latency_us['p99'] / 1000:.1f} ms, non-2xx {stats.non_2xx}, "
                f"socket errors {stats.errors}"
            )
        name = f"{label} ({ingest:,.0f}/s)" if load else label
        return Row(name, values, READ_TARGET_MS, meter.use.foreign), note

    def profile(self, notes: list[str], load) -> None:
        """py-spy (raw, per thread, 100 Hz) of the server during one more loaded window.

        Sampling pauses the server, so this window's latencies are not reported."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = self.args.profile / "serve-under-load.txt"
        seconds = self.args.read_seconds
        argv = [
            "taskset",
            "-c",
            str(self.args.client_cpu),
            py_spy,
            "record",
            "--pid",
            str(self.pid),
        ]
        argv += ["--duration", f"{seconds:.0f}", "--rate", "100", "--format", "raw", "--threads"]
        argv += ["--nolineno", "-o", str(out)]
        self.settle()
        proc = self.wrk.start(self.port, seconds + 4, load[1])
        time.sleep(2)
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        point_reads(self.port, self.args.keys, seconds, self.args.read_rate)
        spy.wait(60)
        Wrk.finish(proc, seconds + 4)
        notes.append(f"py-spy profile of the server under load: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="deliveries per catch-up run")
    parser.add_argument("--keys", type=int, default=1000, help="rows read under load")
    parser.add_argument("--read-seconds", type=float, default=15)
    parser.add_argument("--read-rate", type=float, default=200, help="point reads per second")
    parser.add_argument("--attempts", type=int, default=2, help="read windows tried when disturbed")
    parser.add_argument("--max-seconds", type=float, default=5, help="wrk run for each maximum")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--shares",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1.0, 0.5, 0.25],
        help="fractions of the target ingest rate to read under (default 1,0.5,0.25)",
    )
    parser.add_argument(
        "--load-type",
        default="data_updated",
        help="event type of the background deliveries (another type: the projection ignores them)",
    )
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma list of: sqlite,postgres,reads")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--profile", type=Path, help="also py-spy the loaded server into DIR")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    os.sched_setaffinity(0, {args.client_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="hl-latency-")).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows: list[Row] = []
    notes: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            if "sqlite" not in skip:
                rows.append(sqlite_catch_up(args, workdir))
                print(rows[-1].markdown(), flush=True)
            if "postgres" not in skip and (row := postgres_catch_up(args, workdir, stack)):
                rows.append(row)
                print(rows[-1].markdown(), flush=True)
            if "reads" not in skip:
                binary = shutil.which("wrk") or "wrk"
                body = load_body(args.load_type)
                wrk = Wrk(binary, args.connections, args.client_cpu, workdir, body, SOURCE)
                found, notes = reads_under_load(args, workdir, wrk)
                rows += found
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("| scenario | n | p50 | p99 | max | target (p99) | | others' CPU (cores) |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for row in rows:
        print(row.markdown())
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
