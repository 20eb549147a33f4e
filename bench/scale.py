"""Read costs against the size of the log: `python -m bench scale [--sizes 100k,1M,3M]`.

For each size: a generated JSON Lines export (SPEC 4.3) of N events with 562-byte
bodies, spread ten seconds apart and ending now, so the console chart's last 24 hours
always hold 8,640 of them. It is loaded with `hookledger import` into a fresh SQLite
database. A declarative projection keyed so that a tenth of the events are distinct
rows catches up under a real `hookledger serve`. Then each request below is timed,
the median of REPEAT after one warm-up, and reported with its ratio to the smallest
size's figure. SPEC 7 wants every ratio within 2, besides verify.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.harness import free_port, hookledger_bin, server_env, serving
from ledger import chain
from ledger.timefmt import iso_from_us

BODY_BYTES = 562
SPACING_US = 10_000_000  # ten seconds between events: 8,640 a day at every size
REPEAT = 5
SIZES = "100k,1M,3M"
CONFIG = """database_url = "sqlite:///{db}"

[sources.app]
verifier = "none"

[projections.people]
source = "app"
types = ["person_updated"]
key = "/id"
object = "/data"
columns = {{ email = "/email" }}
"""

REQUESTS = [
    ("GET /ui/", "GET", "/ui/"),
    ("GET /v1/ledger", "GET", "/v1/ledger"),
    ("GET /v1/projections", "GET", "/v1/projections"),
    ("GET /metrics", "GET", "/metrics"),
    ("GET /ui/projections", "GET", "/ui/projections"),
    ("rows?email=...", "GET", "/v1/projections/people/rows?email=p7%40example.com"),
    ("rows?sort=-position", "GET", "/v1/projections/people/rows?sort=-position"),
    # A verification is a job (SPEC 7): the request starts or joins it and answers at
    # once with its progress; the whole check's time is reported on its own line.
    ("POST /v1/ledger/verify?wait=0", "POST", "/v1/ledger/verify?wait=0"),
    ("GET /v1/ledger/verify", "GET", "/v1/ledger/verify"),
]
VERIFICATION = "verification job (whole chain, grows by design)"


def parse_size(text: str) -> int:
    """'100k' -> 100000, '1M' -> 1000000, '2500' -> 2500."""
    text = text.strip()
    scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def body(i: int, rows: int) -> bytes:
    """Event i's body, exactly BODY_BYTES long; `rows` distinct keys over the log."""
    key = i % rows
    doc: dict[str, Any] = {"type": "person_updated", "id": str(key), "email": f"p{key}@example.com"}
    doc["data"] = {"name": f"person {key}", "n": i, "pad": ""}
    empty = len(orjson.dumps(doc))
    doc["data"]["pad"] = "x" * (BODY_BYTES - empty)
    out = orjson.dumps(doc)
    assert len(out) == BODY_BYTES, len(out)
    return out


def export_lines(count: int, now_us: int | None = None) -> Iterator[bytes]:
    """A valid export (SPEC 4.3) of `count` events, chained, the last received now."""
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    rows = max(count // 10, 1)
    headers = '[["content-type","application/json"]]'
    previous = chain.GENESIS
    for position in range(1, count + 1):
        data = body(position, rows)
        digest = hashlib.sha256(data).digest()
        received = now_us - (count - position) * SPACING_US
        event_id = f"evt-{position}"
        previous = chain.link(
            previous,
            chain.record(
                position, received, "app", event_id, "person_updated", "", headers, digest
            ),
        )
        doc = {
            "position": position,
            "source": "app",
            "received_at_us": received,
            "event_id": event_id,
            "event_type": "person_updated",
            "query": "",
            "headers": headers,
            "body_base64": base64.b64encode(data).decode(),
            "body_sha256": digest.hex(),
            "content_type": "application/json",
            "remote_addr": "127.0.0.1",
            "verification": "unverified",
            "duplicate_of": None,
            "hash": previous.hex(),
            "secret_index": None,
            "received_at": iso_from_us(received),
        }
        yield orjson.dumps(doc) + b"\n"


def request(base: str, method: str, path: str) -> float:
    """Seconds for one request to answer 2xx, body read."""
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as response:
        response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{method} {path}: {response.status}")
    return time.perf_counter() - start


def caught_up(base: str) -> bool:
    with urllib.request.urlopen(base + "/v1/projections", timeout=60) as response:
        (p,) = orjson.loads(response.read())["projections"]
    return p["state"] == "live" and p["lag"] == 0


def measure(count: int, workdir: Path, repeat: int) -> dict[str, float]:
    """Build the log of `count` events and time every request; {name: median seconds}."""
    folder = workdir / label(count)
    folder.mkdir()
    export = folder / "export.jsonl"
    started = time.monotonic()
    with export.open("wb") as out:
        for line in export_lines(count):
            out.write(line)
    config = folder / "hookledger.toml"
    config.write_text(CONFIG.format(db=folder / "ledger.db"))
    hl = str(hookledger_bin())
    for command in (["migrate"], ["import", str(export)]):
        subprocess.run(
            [hl, *command, "--config", str(config)],
            check=True,
            env=server_env(),
            stdout=subprocess.DEVNULL,
        )
    export.unlink()
    print(f"{label(count)}: generated and imported in {time.monotonic() - started:.0f} s")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [hl, "serve", "--config", str(config), "--port", str(port)]
    results: dict[str, float] = {}
    with serving(argv, server_env(), port, 1, folder / "serve.log"):
        started = time.monotonic()
        while not caught_up(base):
            time.sleep(1)
        print(f"{label(count)}: projection caught up in {time.monotonic() - started:.0f} s")
        verify_started = 0.0
        for name, method, path in REQUESTS:
            if method == "POST":
                verify_started = time.monotonic()
            request(base, method, path)  # warm-up
            times = [request(base, method, path) for _ in range(repeat)]
            results[name] = statistics.median(times)
            print(f"  {name}: {results[name] * 1000:,.1f} ms")
        results[VERIFICATION] = verification_seconds(base, verify_started)
        print(f"  {VERIFICATION}: {results[VERIFICATION]:,.1f} s")
    return results


def verification_seconds(base: str, since: float) -> float:
    """Seconds from `since` (the first verify request, which started the job) to the
    job's result, following `GET /v1/ledger/verify`."""
    while True:
        with urllib.request.urlopen(base + "/v1/ledger/verify") as answer:
            doc = orjson.loads(answer.read())
        if doc.get("state") != "running":
            return time.monotonic() - since
        time.sleep(0.2)


def fmt(seconds: float) -> str:
    return f"{seconds:,.2f} s" if seconds >= 1 else f"{seconds * 1000:,.1f} ms"


def table(sizes: list[int], results: dict[int, dict[str, float]]) -> str:
    """The markdown table: each request's median per size, and its ratio to the first."""
    head = "| request | " + " | ".join(label(n) for n in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    first = sizes[0]
    for name in [*(n for n, _, _ in REQUESTS), VERIFICATION]:
        cells = []
        for n in sizes:
            value = results[n][name]
            ratio = value / results[first][name] if results[first][name] else float("nan")
            cells.append(fmt(value) if n == first else f"{fmt(value)} ({ratio:.2f}x)")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every size, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    parser.add_argument("--sizes", default=SIZES, help=f"comma-separated (default {SIZES})")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="requests per median")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        results = {n: measure(n, Path(tmp), args.repeat) for n in sizes}
    print()
    print(table(sizes, results))
    return 0
