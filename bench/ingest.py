"""Durable signed 1 KiB deliveries per second: hookledger against a ceiling, with wrk.

Each target is started as a subprocess on a free 127.0.0.1 port, pinned
to one CPU (`taskset`), with wrk pinned to another: one wrk thread, N
connections, a 2 s warm-up, then the measured run. Every request is the
same 1 KiB JSON body with a valid HMAC-SHA256 signature, and its own
event id in a header (as every provider sends one), so every delivery is
a fresh append, checked for duplicates first. After each storing
target the rows are counted and compared with the 2xx answers wrk saw:
a run that lost writes is reported invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import html
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("post.lua")
BIN = Path(sys.executable).parent

SOURCE = "bench"
SECRET = "bench-only-secret-0123456789abcdef"
SECRET_ENV = "BENCH_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-Signature"
BODY_BYTES = 1024
WARMUP_SECONDS = 2
# Issue 7's ingest targets (issue 2 asked for 0.4 of the ceiling).
GOALS_OF_CEILING = (0.4, 0.6)
GOAL_OF_TUTORIAL = 20
GOAL_P99_MS = 20
GOAL_PG_RPS = 5000
TARGETS = (
    "ceiling",
    "hookledger-sqlite",
    "tutorial",
    "tutorial-default",
    "commit-per-request",
    "hookledger-postgres",
)
QUIET = 0.15  # cores: other processes using more than this disturb a run

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


# --- the request ------------------------------------------------------------


def make_body(size: int = BODY_BYTES) -> bytes:
    """A JSON webhook body of exactly `size` bytes (padded with a filler string)."""
    doc = {
        "type": "invoice.paid",
        "created": 1767225600,
        "data": {"object": {"id": "in_1Bench", "amount_paid": 4200, "currency": "eur"}},
        "padding": "",
    }
    empty = len(json.dumps(doc, separators=(",", ":")))
    doc["padding"] = "x" * (size - empty)
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == size, len(body)
    return body


def sign(body: bytes, secret: str = SECRET) -> str:
    """The hex HMAC-SHA256 that the `hmac-sha256` verifier expects."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- wrk --------------------------------------------------------------------


@dataclass
class WrkStats:
    """What one wrk run reported (latencies in microseconds)."""

    requests: int
    duration_s: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    latency_us: dict[str, float]
    command: list[str]
    text: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> int:
        """Responses with a 2xx status."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def errors(self) -> int:
        """Connect, read, write errors and timeouts (no response at all)."""
        return sum(self.socket_errors.values())


def parse_wrk(text: str, command: list[str]) -> WrkStats:
    """The `BENCH_JSON` line printed by post.lua's `done`."""
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON ") :])
            break
    else:
        raise RuntimeError(f"wrk printed no BENCH_JSON line:\n{text}")
    errors = data["errors"]
    return WrkStats(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        statuses={int(k): v for k, v in data["statuses"].items()},
        socket_errors={k: errors[k] for k in ("connect", "read", "write", "timeout")},
        latency_us=data["latency_us"],
        command=command,
        text=text,
    )


@dataclass
class Load:
    """How wrk loads a target: the same for every target."""

    wrk: str
    connections: int
    client_cpu: int
    body_file: Path
    signature: str

    def command(self, url: str, seconds: int) -> list[str]:
        return [
            "taskset",
            "-c",
            str(self.client_cpu),
            self.wrk,
            "-t1",
            f"-c{self.connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(LUA),
            url,
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_BODY_FILE": str(self.body_file),
            "BENCH_SIGNATURE_HEADER": SIGNATURE_HEADER,
            "BENCH_SIGNATURE": self.signature,
            "BENCH_RUN": f"{time.time_ns():x}",  # event ids unique per run
        }

    def start(self, url: str, seconds: int) -> subprocess.Popen[str]:
        """Start wrk in the background (for profiling)."""
        return subprocess.Popen(
            self.command(url, seconds),
            env=self.env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, url: str, seconds: int) -> WrkStats:
        """Run wrk to completion and parse its report."""
        proc = self.start(url, seconds)
        text, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk exited {proc.returncode}:\n{text}")
        return parse_wrk(text, proc.args)  # type: ignore[arg-type]


# --- servers ----------------------------------------------------------------


_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that we have not handed out."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a target: ours without HOOKLEDGER_* overrides, plus the secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    env[SECRET_ENV] = SECRET
    env.update(extra or {})
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60) -> None:
    """Poll GET /readyz until it answers 200; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/readyz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Graceful stop (SIGTERM), then SIGKILL to the process group we created."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def serving(
    argv: Sequence[str], env: dict[str, str], port: int, cpu: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` pinned to `cpu` until the block ends; yields once /readyz is 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(proc, port, log)
            yield proc
        finally:
            stop(proc)


# --- CPU accounting ---------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def process_tree(*roots: int) -> list[int]:
    """`roots` and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of `pids` (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def machine_busy() -> tuple[float, float]:
    """(user + nice + system, steal) CPU seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / TICK, fields[7] / TICK


def children_seconds() -> float:
    """CPU seconds of our waited-for children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuUse:
    """Cores used during a run: by the server side, by wrk, and by everything not ours."""

    server: float
    client: float
    others: float
    steal: float

    @property
    def foreign(self) -> float:
        """Cores taken by anything but this benchmark: other processes and the hypervisor."""
        return self.others + self.steal


class CpuMeter:
    """Measures a window: the server tree's CPU, and other processes' (busy - ours)."""

    def __init__(self, roots: Callable[[], Sequence[int]]) -> None:
        self.roots = roots

    def __enter__(self) -> CpuMeter:
        self.pids = process_tree(*self.roots())
        self.start = (time.monotonic(), cpu_seconds(self.pids), children_seconds(), *machine_busy())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, server, kids, busy, steal = self.start
        pids = sorted(set(self.pids) | set(process_tree(*self.roots())))
        wall = time.monotonic() - wall
        server = cpu_seconds(pids) - server
        kids = children_seconds() - kids
        busy, steal = machine_busy()[0] - busy, machine_busy()[1] - steal
        others = max(busy - server - kids, 0.0)
        self.use = CpuUse(server / wall, kids / wall, others / wall, steal / wall)


def wait_quiet(limit: float, threshold: float = QUIET) -> float:
    """Wait (at most `limit` s) until other processes use under `threshold` cores for 1 s.

    Returns the load seen last, in cores. Our idle server counts too, which is fine:
    it is idle between runs."""
    deadline = time.monotonic() + limit
    announced = False
    while True:
        before = machine_busy()[0]
        time.sleep(1)
        load = machine_busy()[0] - before
        if load < threshold or time.monotonic() > deadline:
            return load
        if not announced:
            print(f"  waiting for a quiet machine ({load:.2f} cores busy)...", flush=True)
            announced = True


# --- targets ----------------------------------------------------------------


@dataclass
class Check:
    """Rows stored against 2xx answers seen by wrk (every warm-up and run)."""

    acknowledged: int
    rows: int
    slack: int
    rejections: int = 0
    chain: str = ""

    @property
    def lost(self) -> int:
        return max(self.acknowledged - self.rows, 0)

    @property
    def valid(self) -> bool:
        """No acknowledged write missing, and no more extra rows than requests in flight."""
        return self.lost == 0 and self.rows - self.acknowledged <= self.slack

    def describe(self) -> str:
        verdict = "ok" if self.valid else "INVALID"
        return (
            f"{self.rows} rows for {self.acknowledged} 2xx answers "
            f"(+{self.rows - self.acknowledged}, in flight allowed {self.slack}): {verdict}"
        )


@dataclass
class Round:
    """One measured wrk run, the CPU it took and how many tries it needed."""

    stats: WrkStats
    cpu: CpuUse
    tries: int


@dataclass
class Target:
    """A server to measure: how to start it and how to count what it stored."""

    key: str
    label: str
    store: str
    workers: int
    argv: list[str]
    env: dict[str, str]
    port: int
    count: Callable[[], tuple[int, int]] | None = None
    chain: Callable[[], str] | None = None
    roots: list[int] = field(default_factory=list)  # more server-side processes (PostgreSQL)
    proc: subprocess.Popen[bytes] | None = None
    runs: list[WrkStats] = field(default_factory=list)  # every wrk run, warm-ups included
    rounds: list[Round] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{SOURCE}"

    def pids(self) -> list[int]:
        return ([self.proc.pid] if self.proc else []) + self.roots


@dataclass
class Result:
    """One target's rounds; its figures are those of the median round (by requests/s)."""

    key: str
    label: str
    store: str
    workers: int
    rounds: list[Round]
    check: Check | None = None

    @property
    def median(self) -> Round:
        return sorted(self.rounds, key=lambda r: r.stats.rps)[len(self.rounds) // 2]

    @property
    def run(self) -> WrkStats:
        return self.median.stats

    @property
    def cpu(self) -> CpuUse:
        return self.median.cpu

    @property
    def valid(self) -> bool:
        return self.check is None or self.check.valid

    @property
    def disturbed(self) -> bool:
        """Some round ran while other processes used QUIET cores or more."""
        return any(r.cpu.foreign >= QUIET for r in self.rounds)


@dataclass
class Bench:
    """Shared settings of one `python -m bench ingest` invocation."""

    load: Load
    duration: int
    server_cpu: int
    workdir: Path
    rounds: int = 5
    attempts: int = 3
    quiet_wait: float = 120
    profile_dir: Path = Path(tempfile.gettempdir())
    results: list[Result] = field(default_factory=list)

    def start_all(self, stack: contextlib.ExitStack, targets: Sequence[Target]) -> None:
        """Start every server up front, so that all of them run the same code."""
        for t in targets:
            print(f"starting {t.label}", flush=True)
            log = self.workdir / f"{t.key}.log"
            t.proc = stack.enter_context(serving(t.argv, t.env, t.port, self.server_cpu, log))

    def run_all(self, targets: Sequence[Target]) -> None:
        """Measure started targets in interleaved rounds, then check their writes.

        Interleaving (A B C, A B C, ...) puts each target's runs next to the
        ceiling's in time, so slow drift on a shared machine cancels out of the ratio."""
        for number in range(1, self.rounds + 1):
            print(f"\n== round {number} of {self.rounds}", flush=True)
            for t in targets:
                self.measure(t)
        time.sleep(1)  # let requests still in flight when wrk stopped finish
        print("\n== results", flush=True)
        for t in targets:
            self.results.append(self.finish(t))

    def measure(self, t: Target) -> None:
        """Warm `t` up, then one measured run (retried while others use the machine)."""
        wait_quiet(self.quiet_wait)
        t.runs.append(self.load.run(t.url, WARMUP_SECONDS))
        best: Round | None = None
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                wait_quiet(self.quiet_wait)
            with CpuMeter(t.pids) as meter:
                stats = self.load.run(t.url, self.duration)
            t.runs.append(stats)
            use = meter.use
            print(
                f"  {t.label:42} {stats.rps:8,.0f} req/s  p99 {fmt_ms(stats.latency_us['p99']):>9}"
                f"  cores: server {use.server:.2f}, wrk {use.client:.2f}, others {use.others:.2f}"
                f", steal {use.steal:.2f}",
                flush=True,
            )
            if best is None or use.foreign < best.cpu.foreign:
                best = Round(stats, use, attempt)
            if use.foreign < QUIET:
                break
            print(f"  (disturbed: others and steal took {use.foreign:.2f} cores; measuring again)")
        assert best is not None
        t.rounds.append(best)

    def finish(self, t: Target) -> Result:
        """The result for `t`, with its rows counted against wrk's 2xx answers."""
        result = Result(t.key, t.label, t.store, t.workers, t.rounds)
        run = result.run
        print(f"\n{t.label}: median of {len(t.rounds)} rounds")
        print(" ".join(run.command))
        print("\n".join(f"  {line}" for line in run.text.splitlines() if "BENCH_JSON" not in line))
        if t.count is not None:
            rows, rejections = t.count()
            result.check = Check(
                acknowledged=sum(r.ok for r in t.runs),
                rows=rows,
                slack=len(t.runs) * self.load.connections
                + sum(r.socket_errors["timeout"] for r in t.runs),
                rejections=rejections,
                chain=t.chain() if t.chain is not None else "",
            )
            print(f"  writes: {result.check.describe()}; rejections: {rejections}")
            if result.check.chain:
                print(f"  chain: {result.check.chain}")
        return result


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


def hookledger_bin() -> Path:
    """The `hookledger` script of the running interpreter's environment."""
    candidate = BIN / "hookledger"
    return candidate if candidate.exists() else Path(shutil.which("hookledger") or "hookledger")


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


def pin_tree(pid: int, cpu: int) -> int:
    """Pin a process and its descendants (a PostgreSQL postmaster's workers) to `cpu`."""
    pids = process_tree(pid)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(p, {cpu})
    return len(pids)


def throwaway_postgres(stack: contextlib.ExitStack, cpu: int | None = None) -> tuple | None:
    """A throwaway local PostgreSQL stopped with `stack`, and its postmaster's pid, with
    its processes pinned to `cpu` when given; None (and why, printed) if it cannot start."""
    try:
        from tests.pg import ThrowawayPostgres

        pg = ThrowawayPostgres().start()
    except (ImportError, RuntimeError, OSError) as e:
        print(f"PostgreSQL skipped: {e}")
        return None
    stack.callback(pg.stop)
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    if cpu is not None:
        pin_tree(postmaster, cpu)  # backends forked later inherit the affinity
    return pg, postmaster


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


# --- profile ----------------------------------------------------------------

PROFILE_RATE = 100  # samples per second


@dataclass
class Sampled:
    """One py-spy recording of hookledger under load, as per-thread sample counters."""

    command: list[str]
    seconds: int
    rps: float
    samples: dict[str, int]  # thread name -> samples
    own: dict[str, Counter[str]]  # thread -> innermost frame -> samples
    total: dict[str, Counter[str]]  # thread -> function anywhere on the stack -> samples
    python_own: dict[str, Counter[str]]  # thread -> innermost *Python* frame -> samples
    callers: dict[str, dict[str, Counter[str]]]  # thread -> innermost frame -> Python frame

    @property
    def ticks(self) -> int:
        """Samples a thread busy all the time would have."""
        return PROFILE_RATE * self.seconds

    def waiting(self, thread: str) -> int:
        """Samples spent blocked in a `threading` wait (py-spy may count those as active)."""
        return sum(self.python_own[thread][name] for name in WAITS)


# Innermost Python frames that mean "blocked, waiting for work". The appender's `_run`
# loop only blocks in C (`queue.SimpleQueue.get`); its work shows under `_write`.
WAITS = (
    "threading.py:Condition.wait",
    "threading.py:Event.wait",
    "ledger/appender.py:Appender._run",
)


@dataclass
class Profile:
    """Python-level samples, and native-level ones (slower to take, so indicative)."""

    python: Sampled
    native: Sampled | None


def py_spy_bin() -> str | None:
    candidate = BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def frame_name(frame: str) -> str:
    """`func (path/to/file.py)` -> `path/to/file.py:func`; unresolved native addresses merged."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if name.startswith("0x"):
        name = "(unresolved address)"
    return f"{where}:{name}" if where else name


def is_python(name: str) -> bool:
    where = name.rpartition(":")[0]
    return where.endswith(".py") or where.startswith("<")


def parse_raw_profile(
    text: str,
) -> tuple[
    dict[str, int],
    dict[str, Counter[str]],
    dict[str, Counter[str]],
    dict[str, Counter[str]],
    dict[str, dict[str, Counter[str]]],
]:
    """Per-thread counters from py-spy's raw (collapsed) output: samples, own, total,
    innermost Python frame, and the innermost Python frame under each innermost frame."""
    samples: Counter[str] = Counter()
    own: dict[str, Counter[str]] = {}
    total: dict[str, Counter[str]] = {}
    python_own: dict[str, Counter[str]] = {}
    callers: dict[str, dict[str, Counter[str]]] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        heads = [f for f in frames if f.startswith("thread ")]
        thread = heads[0].split(": ", 1)[-1] if heads else "?"
        calls = [frame_name(f) for f in frames if not f.startswith(("process ", "thread "))]
        samples[thread] += n
        if not calls:
            continue
        python = [c for c in calls if is_python(c)]
        innermost_python = python[-1] if python else "(no Python frame)"
        own.setdefault(thread, Counter())[calls[-1]] += n
        python_own.setdefault(thread, Counter())[innermost_python] += n
        callers.setdefault(thread, {}).setdefault(calls[-1], Counter())[innermost_python] += n
        for name in set(calls):
            total.setdefault(thread, Counter())[name] += n
    for thread in samples:
        for table in (own, total, python_own):
            table.setdefault(thread, Counter())
        callers.setdefault(thread, {})
    return dict(samples), own, total, python_own, callers


def record(bench: Bench, py_spy: str, pid: int, url: str, native: bool) -> Sampled:
    """py-spy (pinned with wrk) on `pid` for the bench duration while wrk loads `url`."""
    seconds = bench.duration
    raw = bench.profile_dir / f"profile-{'native' if native else 'python'}.txt"
    command = [
        "taskset",
        "-c",
        str(bench.load.client_cpu),
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(PROFILE_RATE),
        "--format",
        "raw",
        "--threads",
        "--nolineno",
        *(["--native"] if native else []),
        "--output",
        str(raw),
    ]
    wait_quiet(bench.quiet_wait)
    wrk = bench.load.start(url, seconds + 3)
    time.sleep(1.5)
    spy = subprocess.run(command, capture_output=True, text=True, check=False)
    text, _ = wrk.communicate(timeout=seconds + 120)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {spy.stderr.strip()}")
    stats = parse_wrk(text, wrk.args)  # type: ignore[arg-type]
    sampled = Sampled(command, seconds, stats.rps, *parse_raw_profile(raw.read_text()))
    print(f"\n{' '.join(command)}\n  {stats.rps:,.0f} req/s while sampled")
    for thread, n in sorted(sampled.samples.items(), key=lambda kv: -kv[1]):
        print(f"  {thread}: {n} samples of {sampled.ticks}, {sampled.waiting(thread)} waiting")
        for name, k in sampled.own[thread].most_common(10):
            print(f"    own {100 * k / sampled.ticks:5.1f}%  {name}")
    return sampled


def profile_target(workdir: Path) -> Target:
    """A hookledger (SQLite, 1 worker) of its own for py-spy, started with the others."""
    target = hookledger_sqlite_target(workdir, key="profile")
    target.label += " (for py-spy)"
    return target


def profile_hookledger(bench: Bench, py_spy: str, target: Target) -> Profile:
    """Profile a started hookledger target under the benchmark's wrk load with py-spy."""
    print("\n== profile: hookledger, SQLite, 1 worker, under py-spy", flush=True)
    assert target.proc is not None
    wait_quiet(bench.quiet_wait)
    bench.load.run(target.url, WARMUP_SECONDS)
    python = record(bench, py_spy, target.proc.pid, target.url, native=False)
    try:
        native = record(bench, py_spy, target.proc.pid, target.url, native=True)
    except RuntimeError as e:
        print(f"  native profile skipped: {e}")
        native = None
    return Profile(python, native)


# --- the machine ------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mount_of(path: Path) -> str:
    """`fstype on device` for the filesystem holding `path`."""
    best = ("", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, point, fstype, *_ = line.split()
            if str(path).startswith(point) and len(point) >= len(best[0]):
                best = (point, device, fstype)
    return f"{best[2]} on {best[1]}"


def fsync_ms(directory: Path, overwrite: bool, rounds: int = 100) -> float:
    """Median ms of a 4 KiB write then sync in `directory`.

    `overwrite`: rewrite blocks of a preallocated file with fdatasync (a reused WAL);
    else append to a growing file with fsync (metadata too)."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\1" * 4096
    times = []
    try:
        if overwrite:
            os.write(fd, b"\0" * 4096 * rounds)
            os.fsync(fd)
        for i in range(rounds):
            start = time.perf_counter()
            if overwrite:
                os.pwrite(fd, block, i * 4096)
                os.fdatasync(fd)
            else:
                os.write(fd, block)
                os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(bench: Bench) -> dict[str, str]:
    """The facts that make the numbers comparable."""
    meminfo = Path("/proc/meminfo").read_text().split()
    wrk = subprocess.run([bench.load.wrk, "-v"], capture_output=True, text=True, check=False)
    pg = next((r.store for r in bench.results if r.store.startswith("PostgreSQL")), "not measured")
    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores"
        f" (servers on CPU {bench.server_cpu}, wrk on CPU {bench.load.client_cpu})",
        "memory": f"{int(meminfo[meminfo.index('MemTotal:') + 1]) // 1024} MiB",
        "OS": f"Linux {platform.release()}",
        "data directory": f"{bench.workdir} ({mount_of(bench.workdir)}); "
        f"median 4 KiB append + fsync {fsync_ms(bench.workdir, False):.2f} ms, "
        f"overwrite + fdatasync {fsync_ms(bench.workdir, True):.2f} ms (measured after the runs)",
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": pg.removeprefix("PostgreSQL "),
        "server stack": ", ".join(
            f"{p} {version_of(p)}"
            for p in ("uvicorn", "uvloop", "httptools", "starlette", "sqlalchemy", "psycopg")
        ),
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0].split(" Copyright")[0].strip(),
    }


def code_state() -> str:
    """The commit measured, and whether the working tree had uncommitted changes."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read only: never touch the index
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, env=env, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if head.returncode != 0:
        return "not a git checkout"
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    extra = f" with uncommitted changes to {', '.join(changed)}" if changed else ""
    return f"commit {head.stdout.strip()}{extra}"


# --- the report -------------------------------------------------------------


def fmt_ms(us: float) -> str:
    ms = us / 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def ceiling_of(results: Sequence[Result]) -> Result | None:
    return next((r for r in results if r.key == "ceiling"), None)


def ratio(result: Result, ceiling: Result | None) -> float | None:
    """Requests/s relative to the ceiling; None for the multi-worker PostgreSQL figure."""
    if ceiling is None or result.workers != 1 or not ceiling.run.rps:
        return None
    return result.run.rps / ceiling.run.rps


COLORS = {
    "ceiling": "#9aa0a6",
    "hookledger-sqlite": "#1a73e8",
    "tutorial": "#e8710a",
    "tutorial-default": "#b85c00",
    "commit-per-request": "#f6ae2d",
    "hookledger-postgres": "#12846e",
}


def svg_chart(results: Sequence[Result], connections: int) -> str:
    """A horizontal bar chart of requests/s, with the ceiling goal as a dashed line."""
    longest = max((len(r.label) for r in results), default=10)
    left = 20 + 7 * longest  # about 7 px per character at 13 px
    bar, gap, top, right = 26, 16, 48, 190
    width = left + 420 + right
    height = top + len(results) * (bar + gap) + 30
    peak = max((r.run.rps for r in results), default=1.0) or 1.0
    scale = (width - left - right) / peak
    ceiling = ceiling_of(results)
    halo = 'stroke="#ffffff" stroke-width="4" paint-order="stroke"'
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="26" font-size="15" font-weight="bold">Durable signed 1 KiB deliveries '
        f"per second (wrk, 1 thread, {connections} connections)</text>",
    ]
    if ceiling is not None:  # first, so that bars and labels are drawn over it
        x = left + max(GOALS_OF_CEILING) * ceiling.run.rps * scale
        bottom = top + len(results) * (bar + gap) - gap + 6
        out += [
            f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="#d93025" '
            'stroke-width="1.5" stroke-dasharray="5,4"/>',
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#d93025">'
            f"goal: {max(GOALS_OF_CEILING)} &#215; ceiling</text>",
        ]
    for i, r in enumerate(results):
        y = top + i * (bar + gap)
        w = max(r.run.rps * scale, 1.0)
        share = ratio(r, ceiling)
        value = f"{r.run.rps:,.0f}/s" + (
            f" ({share:.2f}&#215;)" if share is not None else " (absolute)"
        )
        out += [
            f'<text x="{left - 10}" y="{y + bar * 0.68:.0f}" text-anchor="end">'
            f"{html.escape(r.label)}</text>",
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" '
            f'fill="{COLORS.get(r.key, "#5f6368")}"/>',
            f'<text x="{left + w + 8:.1f}" y="{y + bar * 0.68:.0f}" {halo}>{value}</text>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


LAYERS = (
    ("asyncio/runners.py:Runner.run", "uvloop's C event loop (epoll, socket reads, callbacks)"),
    ("uvicorn/", "uvicorn (HTTP protocol on httptools, response writes)"),
    ("starlette/", "Starlette (request, routing, exception wrapper, response)"),
    ("api/access_log.py", "hookledger's access log (`api/access_log.py`)"),
    ("logging/", "stdlib `logging`"),
    ("prometheus_client/", "`prometheus_client` (metrics)"),
    ("api/", "hookledger `api/` (ingest route, body read)"),
    ("ledger/", "hookledger `ledger/` (intake, verifier, chain, appender)"),
    ("sqlalchemy/", "SQLAlchemy"),
)

KEY_FUNCTIONS = {  # steps of the ingest path; those absent from the profile are skipped
    "api/app.py:HookledgerApp.__call__": "`api.app.HookledgerApp` (every request, all inside it)",
    "api/ingest.py:Ingest.fast": "`api.ingest.Ingest.fast` (the whole POST handler)",
    "api/ingest.py:_ingest": "`api.ingest._ingest` (read, verify, append, answer)",
    "api/ingest.py:read_body": "`api.ingest.read_body`",
    "ledger/intake.py:decide": "`ledger.intake.decide` (verify, canonical headers, sha256)",
    "ledger/appender.py:Appender._submit": "`ledger.appender.Appender._submit` (hand-off)",
    "api/access_log.py:AccessLines.add": "`api.access_log.AccessLines.add` (one access line)",
    "api/access_log.py:AccessLines._flush": "`api.access_log.AccessLines._flush` (log writes)",
    "logging/__init__.py:Logger.info": "`logging.Logger.info`",
    "ledger/appender.py:Appender._write": "`ledger.appender.Appender._write` (one batch)",
    "ledger/store.py:append_batch": "`ledger.store.append_batch` (chain + INSERT)",
    "sqlalchemy/engine/default.py:DefaultDialect.do_commit": "commit (SQLite: WAL write, fdatasync)",
}


def layer_of(name: str) -> str:
    for prefix, label in LAYERS:
        if name.startswith(prefix):
            return label
    return "other Python (stdlib, dataclass `__init__`, ...)"


def pct(n: float, total: float) -> str:
    """A percentage: one decimal under 10%."""
    if not total:
        return "-"
    share = 100 * n / total
    return f"{share:.1f}%" if share < 10 else f"{share:.0f}%"


def thread_title(thread: str) -> str:
    titles = {"MainThread": "Event loop thread", "hookledger-appender": "Appender thread"}
    return f"{titles.get(thread, 'Thread')} (`{thread}`)"


def top_callers(sampled: Sampled, thread: str, name: str, count: int = 2) -> str:
    """`(under f 8%, g 3%)`: the Python functions a native frame was reached from."""
    if is_python(name):
        return ""
    under = sampled.callers[thread].get(name, Counter()).most_common(count)
    parts = [f"`{caller.rpartition(':')[2]}` {pct(k, sampled.ticks)}" for caller, k in under]
    return f" (under {', '.join(parts)})" if parts and is_python(under[0][0]) else ""


def profile_section(profile: Profile) -> list[str]:
    """The "where the time goes" list, from py-spy's samples (shares of wall-clock time)."""
    p = profile.python
    lines = [
        "## Where the time goes",
        "",
        f"py-spy sampled `hookledger serve` (SQLite, 1 worker) at {PROFILE_RATE} Hz for",
        f"{p.seconds} s under the same wrk load ({p.rps:,.0f} req/s while sampled: py-spy",
        "pauses the process for each sample). Every share below is of wall-clock time, so",
        "a thread's shares add up to the time it was busy. *Own* time is a function being",
        "the innermost Python frame (C code it calls, such as SQLite, hashing or a socket",
        "write, counts as its own); *total* time is the function being anywhere on the",
        "stack. py-spy counts a thread blocked in a wait (a `threading` wait, the appender's",
        "queue) as active here, so those samples are reported as waiting for work.",
        "",
        "```sh",
        " ".join(p.command)
        .replace(str(p.command[-1]), "profile-python.txt")
        .replace(p.command[3], "py-spy"),
        "```",
        "",
    ]
    for thread, n in sorted(p.samples.items(), key=lambda kv: -kv[1]):
        own, total, waiting = p.own[thread], p.total[thread], p.waiting(thread)
        if n - waiting < 0.02 * p.ticks:
            continue
        busy = pct(n - waiting, p.ticks)
        wait = f", waiting for work {pct(waiting, p.ticks)}" if waiting else ""
        lines += [f"**{thread_title(thread)}**: busy {busy} of the time{wait}.", ""]
        if thread == "MainThread":
            layers: Counter[str] = Counter()
            for name, k in own.items():
                layers[layer_of(name)] += k
            lines += ["Own time by layer:", ""]
            lines += [f"- {pct(k, p.ticks)} {label}" for label, k in layers.most_common()]
            lines.append("")
        lines += ["Top functions by own time:", ""]
        top = [(name, k) for name, k in own.most_common() if name not in WAITS][:8]
        lines += [f"- {pct(k, p.ticks)} `{name}`" for name, k in top]
        key = [(label, total[name]) for name, label in KEY_FUNCTIONS.items() if total[name]]
        if key:
            lines += ["", "Total time of some steps:", ""]
            lines += [f"- {pct(k, p.ticks)} {label}" for label, k in key]
        lines.append("")
    if profile.native is not None:
        q = profile.native
        lines += [
            f"With native frames (`--native`, {q.rps:,.0f} req/s while sampled: unwinding C",
            "stacks pauses the process longer, so these shares are indicative), the top own",
            "entries outside `threading` waits, with the Python functions they ran under:",
            "",
        ]
        for thread in ("MainThread", "hookledger-appender"):
            if thread not in q.samples:
                continue
            own = q.own[thread]
            waits = {name for name, under in q.callers[thread].items() if set(under) <= set(WAITS)}
            top = [(name, k) for name, k in own.most_common() if name not in waits][:6]
            entries = [
                f"  - {pct(k, q.ticks)} `{name}`{top_callers(q, thread, name)}" for name, k in top
            ]
            lines += [f"- {thread_title(thread)}:", *entries]
        lines.append("")
    return lines


def estimates(a: Result, b: Result) -> tuple[float, list[tuple[float, bool]]]:
    """a / b two ways: the ratio of the median requests/s, and the ratio within each round
    (where the two ran back to back), each marked when a run in it was disturbed."""
    pairs = [
        (x.stats.rps / y.stats.rps, max(x.cpu.foreign, y.cpu.foreign) >= QUIET)
        for x, y in zip(a.rounds, b.rounds, strict=False)
        if y.stats.rps
    ]
    return a.run.rps / b.run.rps if b.run.rps else 0.0, pairs


def ratio_goal(text: str, a: Result, b: Result, goal: float) -> list[str]:
    """The verdict on `a` being at least `goal` times `b`, from two estimates that must agree."""
    of_medians, pairs = estimates(a, b)
    within = statistics.median(q for q, _ in pairs) if pairs else of_medians
    listed = ", ".join(f"{q:.2f}{'*' if bad else ''}" for q, bad in pairs)
    low, high = min(of_medians, within), max(of_medians, within)
    verdict = "met" if low >= goal else "not met" if high < goal else "borderline"
    line = (
        f"- {text}: **{verdict}**. Ratio of the median requests/s: {of_medians:.2f}; "
        f"within each round: {listed} (median {within:.2f})"
    )
    if verdict == "borderline":
        spread = [r.stats.rps for r in b.rounds]
        line += (
            f". The two estimates straddle {goal}: on this shared machine {b.label} alone "
            f"ranged from {min(spread):,.0f} to {max(spread):,.0f} requests/s between rounds; "
            "more rounds (`--rounds`) or a quieter machine would settle it"
        )
    return [line + ("; * marks a round with a disturbed run." if any(b for _, b in pairs) else ".")]


def goal_lines(results: Sequence[Result], connections: int) -> list[str]:
    """The verdicts on issue 7's ingest targets (and issue 2's 0.4), for the targets that ran."""
    by_key = {r.key: r for r in results}
    sqlite, ceiling = by_key.get("hookledger-sqlite"), by_key.get("ceiling")
    tutorial, pg = by_key.get("tutorial"), by_key.get("hookledger-postgres")
    default_journal = by_key.get("tutorial-default")
    lines = ["Goals:", ""]
    if sqlite and ceiling:
        for goal in GOALS_OF_CEILING:
            lines += ratio_goal(
                f"hookledger on SQLite with one worker at least {goal} of the ceiling",
                sqlite,
                ceiling,
                goal,
            )
    if sqlite and tutorial:
        lines += ratio_goal(
            f"at least {GOAL_OF_TUTORIAL:g} times the tutorial receiver",
            sqlite,
            tutorial,
            GOAL_OF_TUTORIAL,
        )
    if sqlite and default_journal:
        lines += ratio_goal(
            f"at least {GOAL_OF_TUTORIAL:g} times the tutorial receiver on SQLite's default "
            "journal (for reference: the goal is judged on the WAL one above)",
            sqlite,
            default_journal,
            GOAL_OF_TUTORIAL,
        )
    if sqlite:
        p99 = sqlite.run.latency_us["p99"] / 1000
        verdict = "met" if p99 < GOAL_P99_MS else "not met"
        lines.append(
            f"- p99 under {GOAL_P99_MS} ms at {connections} connections: "
            f"**{verdict}** ({p99:.1f} ms in the median round)."
        )
    if pg:
        verdict = "met" if pg.run.rps >= GOAL_PG_RPS else "not met"
        lines.append(
            f"- PostgreSQL with {pg.workers} API processes at least {GOAL_PG_RPS:,} "
            f"deliveries/s: **{verdict}** ({pg.run.rps:,.0f}/s in the median round)."
        )
    return [*lines, ""]


def render(
    results: Sequence[Result],
    facts: dict[str, str],
    command: str,
    bench: Bench,
    profile: Profile | None,
    chart: str,
) -> str:
    """docs/performance.md."""
    ceiling = ceiling_of(results)
    connections, duration = bench.load.connections, bench.duration
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `python -m bench ingest`: rerun it rather than editing. -->",
        "",
        "How many durable, signed 1 KiB webhook deliveries per second `hookledger serve`",
        "accepts, next to a receiver that stores nothing (the ceiling) and receivers",
        "that commit each delivery on their own (the tutorial receiver on Flask, and its",
        "logic on hookledger's own stack).",
        "",
        f"![requests per second per target]({chart})",
        "",
        "| target | requests/s | rounds (min to max) | ratio to ceiling | p50 | p99 | non-2xx "
        "| socket errors | server CPU per request | others' CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        q = ratio(r, ceiling)
        low = min(x.stats.rps for x in r.rounds)
        high = max(x.stats.rps for x in r.rounds)
        lines.append(
            f"| {r.label} | {r.run.rps:,.0f} | {low:,.0f} to {high:,.0f} "
            f"| {f'{q:.2f}' if q is not None else '— (absolute)'} "
            f"| {fmt_ms(r.run.latency_us['p50'])} | {fmt_ms(r.run.latency_us['p99'])} "
            f"| {sum(x.stats.non_2xx for x in r.rounds)} | {sum(x.stats.errors for x in r.rounds)} "
            f"| {1e6 * r.cpu.server / r.run.rps if r.run.rps else 0:.0f} µs "
            f"| {max(x.cpu.foreign for x in r.rounds):.2f} cores |"
        )
    lines += [
        "",
        f"requests/s, p50 and p99 are those of each target's median round (rounds: {bench.rounds});",
        "non-2xx and socket errors are summed over its rounds. Server CPU per request is",
        "the CPU time of the server-side processes (PostgreSQL included) during the median",
        "round divided by its requests; others' CPU is the most that other processes on",
        "the machine (and the hypervisor, as steal time) took during any kept round: the",
        "machine is shared.",
        "",
    ]
    lines += goal_lines(results, connections)
    disturbed = [f"*{r.label}*" for r in results if r.disturbed]
    if disturbed:
        lines += [
            f"Warning: other processes (or steal) took {QUIET} cores or more in some kept rounds of "
            f"{'; '.join(disturbed)} (even after retries): those figures are less reliable.",
            "",
        ]
    checked = [r for r in results if r.check is not None]
    if checked:
        lines += [
            "Every storing target's rows were counted after its rounds and compared with the",
            "2xx answers wrk received over all its warm-ups and runs (requests in flight when",
            "wrk stops may be stored without wrk counting them: at most one per connection",
            "and run, hence the allowance):",
            "",
            "| target | 2xx answers | rows stored | extra (allowed) | rejections | chain | valid |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in checked:
            c = r.check
            assert c is not None
            lines.append(
                f"| {r.label} | {c.acknowledged:,} | {c.rows:,} | {c.rows - c.acknowledged} "
                f"({c.slack}) | {c.rejections} | {c.chain or 'n/a'} "
                f"| {'yes' if c.valid else '**NO: lost writes**'} |"
            )
        lines.append("")
    lines += [
        "## What this measures",
        "",
        "Each target is a separate server process on a free 127.0.0.1 port, pinned to one",
        "CPU with `taskset`; wrk runs pinned to another CPU with one thread and",
        f"{connections} keep-alive connections. Each round warms every target up for",
        f"{WARMUP_SECONDS} s and then runs wrk against it for {duration} s; the targets take",
        f"turns (rounds: {bench.rounds}, interleaved) so that drift on a shared machine hits",
        "them alike. Before each run the driver waits for the machine to be quiet, and a",
        f"run during which other processes (or steal) took {QUIET} cores or more is repeated",
        f"(at most {bench.attempts} runs per round; the least disturbed one is kept).",
        "",
        "Every request is the same 1 KiB JSON body with a valid `X-Signature` HMAC-SHA256",
        "and its own delivery id in `X-Event-Id`, as every provider sends one",
        "(`bench/post.lua`). hookledger's source uses the `hmac-sha256` verifier and takes",
        "its event id from that header, so every request is verified, looked up among",
        "earlier deliveries and appended as a new event to the hash chain (the other",
        "targets ignore the header); a 202 means its transaction has committed (SQLite: WAL,",
        "`synchronous=FULL`), so requests/s is durable deliveries per second. Concurrent",
        "deliveries share a transaction and its fsync (group commit).",
        "",
        "- **ceiling**: a bare Starlette route (`bench/ceiling.py`) that reads the body and",
        "  answers 202, under uvicorn with the settings `hookledger serve` uses (one worker,",
        "  no access log, uvloop and httptools). No verification, no storage: about the",
        "  most one Python process with this stack answers on one core.",
        "- **tutorial receiver** (`bench/tutorial.py`): what most webhook tutorials show:",
        "  a Flask route that verifies the HMAC, opens the database (Flask's `g` pattern),",
        "  `INSERT`s one row, `COMMIT`s and answers, served by `app.run(threaded=True)`;",
        "  SQLite in WAL mode with `synchronous=FULL`, so one fsync per delivery.",
        "- **tutorial receiver, SQLite's default journal**: the same receiver on the",
        "  database as the tutorials' code opens it, with nothing set: SQLite's rollback",
        "  journal, where each commit syncs the journal and the database file. The goal",
        "  of 20 times the tutorial receiver is judged against the WAL one, the faster.",
        "- **Starlette, commit per request** (`bench/commit_per_request.py`): the same",
        "  logic on hookledger's own stack (uvicorn, uvloop, httptools, Starlette), one",
        "  request at a time: what group commit and the rest of hookledger are up against",
        "  on equal footing.",
        "- **hookledger, PostgreSQL**: `hookledger serve --workers N` against a throwaway",
        "  local PostgreSQL (`fsync=on`) whose processes are pinned to the server CPU too,",
        "  so the workers and the database share one core; an absolute figure, not a ratio.",
        "",
        "Latencies are wrk's (coordinated omission not corrected). non-2xx counts responses",
        "with another status; socket errors are connect, read and write errors and",
        "timeouts (10 s).",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    wrk = " ".join(results[0].run.command) if results else ""
    if results:
        wrk = wrk.replace(results[0].run.command[-1], "http://127.0.0.1:$PORT/hooks/bench")
    lines += [
        "",
        "## Command",
        "",
        "```sh",
        command,
        "```",
        "",
        f"which runs, for each target and round, the same command with `-d{WARMUP_SECONDS}s`"
        " for the warm-up and then:",
        "",
        "```sh",
        wrk,
        "```",
        "",
    ]
    if profile is not None:
        lines += profile_section(profile)
    return "\n".join(lines).rstrip() + "\n"


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


KEEP_MARKER = "<!-- Sections below are kept by `python -m bench ingest`. -->"


def write_report(
    args: argparse.Namespace, bench: Bench, facts: dict[str, str], profile: Profile | None
) -> None:
    output: Path = args.output
    chart = output.parent / "img" / "ingest.svg"
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(svg_chart(bench.results, args.connections))
    python = sys.executable
    with contextlib.suppress(ValueError):
        python = str(Path(sys.executable).relative_to(REPO))
    command = f"{python} -m bench " + " ".join(sys.argv[1:])
    # Sections recorded by hand from the other benchmarks (rebuild, latency) follow
    # KEEP_MARKER; a new ingest run rewrites everything above it and keeps them.
    kept = ""
    if output.exists() and KEEP_MARKER in output.read_text():
        kept = output.read_text().split(KEEP_MARKER, 1)[1]
    report = render(
        bench.results,
        facts,
        command,
        bench,
        profile,
        os.path.relpath(chart, output.parent),
    )
    output.write_text(report + ("\n" + KEEP_MARKER + kept if kept else ""))
    print(f"\nwrote {output} and {chart}")
