"""The report of `python -m bench ingest`: the machine, the Markdown and the SVG chart.

The facts that make the numbers comparable (`machine`, `code_state`), the verdicts on
the goals, the "Where the time goes" section from the py-spy profile, and
`write_report`, which rewrites docs/performance.md above `KEEP_MARKER` and keeps
what follows it.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib.metadata
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.harness import QUIET, REPO, WARMUP_SECONDS, Bench, Result, fmt_ms
from bench.profile import PROFILE_RATE, WAITS, Profile, Sampled, is_python

# Issue 7's ingest targets (issue 2 asked for 0.4 of the ceiling).
GOALS_OF_CEILING = (0.4, 0.6)
GOAL_OF_TUTORIAL = 20
GOAL_P99_MS = 20
GOAL_PG_RPS = 5000


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
    "ledger/recorder/base.py:append_batch": "`Recorder.append_batch` (chain + INSERT)",
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
