"""Durable signed 1 KiB deliveries per second: hookledger against a ceiling, with wrk.

Each target is started as a subprocess on a free 127.0.0.1 port, pinned
to one CPU (`taskset`), with wrk pinned to another: one wrk thread, N
connections, a 2 s warm-up, then the measured run. Every request is a
1 KiB JSON body of its own (from a pool written before the run) with a
valid HMAC-SHA256 signature, and its own event id in a header (as every
provider sends one), so every delivery is a fresh append, checked for
duplicates by id and by body first. After each storing
target the rows are counted and compared with the 2xx answers wrk saw:
a run that lost writes is reported invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.harness import (
    QUIET,
    REPO,
    SECRET_ENV,
    SIGNATURE_HEADER,
    SOURCE,
    Bench,
    Load,
    Result,
    Target,
    fmt_ms,
    free_port,
    hookledger_bin,
    make_body,
    server_env,
    sign,
    throwaway_postgres,
)
from bench.profile import profile_hookledger, py_spy_bin
from bench.report import ceiling_of, code_state, machine, ratio, write_report

TARGETS = (
    "ceiling",
    "hookledger-sqlite",
    "tutorial",
    "tutorial-default",
    "commit-per-request",
    "hookledger-postgres",
)

CONFIG = """\
# written by bench/ingest.py
database_url = "{url}"
{server}

[sources.{source}]
verifier = "hmac-sha256"
secret_env = "{secret_env}"
signature_header = "{header}"
event_id = "header:X-Event-Id"
"""


# --- targets ----------------------------------------------------------------


def sqlite_counts(path: Path, rejections: bool = True) -> tuple[int, int]:
    """Rows in `events` (and `rejections`) of a SQLite database."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        refused = db.execute("SELECT count(*) FROM rejections").fetchone()[0] if rejections else 0
    return events, refused


def postgres_counts(url: str) -> tuple[int, int]:
    """Rows in `events` and `rejections` of a PostgreSQL database."""
    import psycopg

    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()
        refused = conn.execute("SELECT count(*) FROM rejections").fetchone()
    return (events[0] if events else 0), (refused[0] if refused else 0)


def hookledger_verify(config: Path) -> str:
    """`hookledger verify`'s verdict on the chain after the run."""
    proc = subprocess.run(
        [str(hookledger_bin()), "verify", "--config", str(config)],
        env=server_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return (text[-1] if text else "") + (
        "" if proc.returncode == 0 else f" (exit {proc.returncode})"
    )


def write_config(path: Path, url: str, server: str = "") -> Path:
    """A hookledger config with one `hmac-sha256` source, its event id in X-Event-Id.

    `server` is extra TOML for the `[server]` table (empty: the defaults)."""
    path.write_text(
        CONFIG.format(
            url=url,
            server=f"\n[server]\n{server}\n" if server else "",
            source=SOURCE,
            secret_env=SECRET_ENV,
            header=SIGNATURE_HEADER,
        )
    )
    return path


def hookledger_argv(config: Path, port: int, workers: int) -> list[str]:
    return [
        str(hookledger_bin()),
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def ceiling_target() -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "bench.ceiling", "--port", str(port)]
    return Target("ceiling", "ceiling (bare Starlette)", "nothing", 1, argv, server_env(), port)


def hookledger_sqlite_target(workdir: Path, key: str = "hookledger-sqlite") -> Target:
    db = workdir / f"{key}.db"
    config = write_config(workdir / f"{key}.toml", f"sqlite:///{db}")
    port = free_port()
    return Target(
        key,
        "hookledger, SQLite, 1 worker",
        f"SQLite {sqlite3.sqlite_version}",
        1,
        hookledger_argv(config, port, 1),
        server_env(),
        port,
        count=lambda: sqlite_counts(db),
        chain=lambda: hookledger_verify(config),
    )


def tutorial_target(workdir: Path, key: str = "tutorial") -> Target:
    """The tutorial receiver (Flask on its own server), or its logic on uvicorn and Starlette."""
    db = workdir / f"{key}.db"
    port = free_port()
    label, module = {
        "tutorial": ("tutorial receiver (Flask, commit per request)", "bench.tutorial"),
        "tutorial-default": (
            "tutorial receiver, SQLite's default journal",
            "bench.tutorial",
        ),
        "commit-per-request": ("Starlette, commit per request", "bench.commit_per_request"),
    }[key]
    journal = "default" if key == "tutorial-default" else "wal"
    return Target(
        key,
        label,
        f"SQLite {sqlite3.sqlite_version}",
        1,
        [sys.executable, "-m", module, "--port", str(port)],
        server_env({"BENCH_TUTORIAL_DB": str(db), "BENCH_TUTORIAL_JOURNAL": journal}),
        port,
        count=lambda: sqlite_counts(db, rejections=False),
    )


def postgres_target(
    stack: contextlib.ExitStack, workdir: Path, cpu: int, workers: int
) -> Target | None:
    """hookledger on a throwaway PostgreSQL pinned to the server CPU, or None if unavailable."""
    started = throwaway_postgres(stack, cpu)
    if started is None:
        return None
    pg, postmaster = started
    url = pg.create_database()
    config = write_config(workdir / "hookledger-postgres.toml", url)
    port = free_port()
    return Target(
        "hookledger-postgres",
        f"hookledger, PostgreSQL, {workers} workers",
        f"PostgreSQL {postgres_version(url)}",
        workers,
        hookledger_argv(config, port, workers),
        server_env(),
        port,
        count=lambda: postgres_counts(url),
        chain=lambda: hookledger_verify(config),
        roots=[postmaster],
    )


def postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def profile_target(workdir: Path) -> Target:
    """A hookledger (SQLite, 1 worker) of its own for py-spy, started with the others."""
    target = hookledger_sqlite_target(workdir, key="profile")
    target.label += " (for py-spy)"
    return target


# --- entry point ------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ingest` subcommand's options."""
    parser.add_argument("--duration", type=int, default=10, help="seconds per target (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument(
        "--output", type=Path, help="write this Markdown report (and img/ingest.svg)"
    )
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU for the servers (1)")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU for wrk and py-spy (0)")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of the default list",
    )
    parser.add_argument("--pg-workers", type=int, default=2, help="workers on PostgreSQL (2)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved runs per target; the median counts (5)"
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help=f"runs per target while other processes use over {QUIET} cores (3)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="seconds to wait for a quiet machine before each run (120)",
    )
    parser.add_argument("--workdir", type=Path, help="where databases go (a new temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")


def run(args: argparse.Namespace) -> int:
    """Measure every target once, print the results and write the report."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    available = os.sched_getaffinity(0)
    if {args.server_cpu, args.client_cpu} - available or args.server_cpu == args.client_cpu:
        print(
            f"need two distinct CPUs among {sorted(available)} for --server-cpu and --client-cpu",
            file=sys.stderr,
        )
        return 2
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hookledger-bench-", dir=args.workdir)).resolve()
    body = make_body()
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    load = Load(wrk, args.connections, args.client_cpu, body_file, sign(body))
    bench = Bench(
        load,
        args.duration,
        args.server_cpu,
        workdir,
        args.rounds,
        args.attempts,
        args.quiet_wait,
    )
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        print(
            f"unknown targets: {', '.join(unknown)} (known: {', '.join(TARGETS)})", file=sys.stderr
        )
        return 2
    bench.profile_dir = Path(tempfile.mkdtemp(prefix="hookledger-profile-", dir=args.workdir))
    code_before = code_state()
    print(f"working directory {workdir}; body {len(body)} bytes; {code_before}", flush=True)
    # SIGTERM (e.g. `timeout`) unwinds like an exception: servers and PostgreSQL get stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with contextlib.ExitStack() as stack:
            # PostgreSQL first: it picks its own port, and then listens on it.
            pg = None
            if "hookledger-postgres" in wanted:
                pg = postgres_target(stack, workdir, args.server_cpu, args.pg_workers)
            made = {
                "ceiling": ceiling_target,
                "hookledger-sqlite": lambda: hookledger_sqlite_target(workdir),
                "tutorial": lambda: tutorial_target(workdir),
                "tutorial-default": lambda: tutorial_target(workdir, "tutorial-default"),
                "commit-per-request": lambda: tutorial_target(workdir, "commit-per-request"),
                "hookledger-postgres": lambda: pg,
            }
            targets = [t for t in (made[key]() for key in TARGETS if key in wanted) if t]
            py_spy = py_spy_bin()
            if not args.no_profile and py_spy is None:
                print("profile skipped: py-spy is not installed (pip install py-spy)")
            spied = profile_target(workdir) if py_spy and not args.no_profile else None
            bench.start_all(stack, [*targets, *([spied] if spied else [])])
            code_started = code_state()
            bench.run_all(targets)
            profile = profile_hookledger(bench, py_spy, spied) if py_spy and spied else None
            facts = machine(bench)
        summarize(bench.results)
        facts["code"] = code_before + (
            ""
            if code_started == code_before
            else f" when starting; {code_started} once every server had started (the working"
            " tree changed meanwhile: the servers may run different code)"
        )
        if profile is not None:
            print(f"raw py-spy profiles kept in {bench.profile_dir}")
        else:
            shutil.rmtree(bench.profile_dir, ignore_errors=True)
        if args.output:
            write_report(args, bench, facts, profile)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.valid for r in bench.results) else 1


def summarize(results: Sequence[Result]) -> None:
    ceiling = ceiling_of(results)
    print("\n== summary")
    for r in results:
        q = ratio(r, ceiling)
        print(
            f"  {r.label:42} {r.run.rps:9,.0f} req/s  "
            f"{f'{q:.2f}x' if q is not None else '  -  '}  p99 {fmt_ms(r.run.latency_us['p99'])}"
            f"  non-2xx {r.run.non_2xx}  errors {r.run.errors}"
            + (f"  writes {'ok' if r.valid else 'LOST'}" if r.check else "")
        )
