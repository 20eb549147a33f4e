"""The py-spy profile of `python -m bench ingest`: recording hookledger under wrk's load.

`record` samples a started hookledger with py-spy (Python frames, then native ones)
while wrk loads it; `parse_raw_profile` turns py-spy's raw output into per-thread
counters (`Sampled`), which `bench.report` writes up as "Where the time goes".
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

from bench.harness import BIN, WARMUP_SECONDS, Bench, Target, parse_wrk, wait_quiet

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
