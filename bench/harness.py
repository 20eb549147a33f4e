"""What every benchmark shares: the signed request, wrk, servers, CPU accounting.

The leaf of the benchmark modules (it imports none of them): the signed 1 KiB body,
wrk and its `BENCH_JSON` report (`WrkStats`, `parse_wrk`, `Load`), starting and
stopping servers on free ports (`free_port`, `serving`, `stop`, `wait_ready`,
`server_env`), CPU accounting (`CpuMeter`, `wait_quiet`), the measured targets and
their results (`Target`, `Round`, `Check`, `Result`, `Bench`), and the processes the
other benchmarks start too (`hookledger_bin`, `pin_tree`, `throwaway_postgres`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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
QUIET = 0.15  # cores: other processes using more than this disturb a run


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


POOL_RATE = 15_000  # requests/s no target reaches here: the pool outlasts every run


def write_pool(path: Path, body: bytes, run: str, count: int) -> None:
    """`count` distinct signed variants of `body` for post.lua, one "signature body" a line.

    Each variant ends its padding with the run and a counter (same length as `body`):
    a real sender's bodies differ, and the `hmac-sha256` verifier deduplicates identical
    ones (SPEC 3), so one repeated body would measure duplicates, not fresh appends."""
    head, tail = body.rsplit(b'"}', 1)
    lines = []
    for n in range(count):
        tag = f"{run}-{n}".encode()
        variant = head[: len(head) - len(tag)] + tag + b'"}' + tail
        lines.append(sign(variant).encode() + b" " + variant + b"\n")
    path.write_bytes(b"".join(lines))


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

    def pool_file(self, seconds: int) -> Path:
        """A fresh pool of distinct signed bodies for one wrk run of `seconds`."""
        path = self.body_file.with_name("pool.txt")
        write_pool(path, self.body_file.read_bytes(), f"{time.time_ns():x}", POOL_RATE * seconds)
        return path

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

    def env(self, seconds: int) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_BODY_FILE": str(self.body_file),
            "BENCH_POOL_FILE": str(self.pool_file(seconds)),
            "BENCH_SIGNATURE_HEADER": SIGNATURE_HEADER,
            "BENCH_SIGNATURE": self.signature,
            "BENCH_RUN": f"{time.time_ns():x}",  # event ids unique per run
        }

    def start(self, url: str, seconds: int) -> subprocess.Popen[str]:
        """Start wrk in the background (for profiling)."""
        return subprocess.Popen(
            self.command(url, seconds),
            env=self.env(seconds),
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


# --- targets and results ----------------------------------------------------


def fmt_ms(us: float) -> str:
    ms = us / 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


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


# --- processes the other benchmarks start too -------------------------------


def hookledger_bin() -> Path:
    """The `hookledger` script of the running interpreter's environment."""
    candidate = BIN / "hookledger"
    return candidate if candidate.exists() else Path(shutil.which("hookledger") or "hookledger")


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
