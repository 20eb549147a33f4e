"""The driver's side of bench/latency.py: config, HTTP client, catch-up and read loops."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.harness import REPO, SECRET_ENV, SIGNATURE_HEADER, hookledger_bin, server_env, sign, stop
from tests.projection_support import entities_projection

SOURCE = "app"
CONFIG = """\
# written by bench/latency.py
database_url = "{url}"
[server]
access_log = false
[sources.{source}]
verifier = "hmac-sha256"
secret_env = "{secret_env}"
signature_header = "{header}"
body_dedup = false  # the background load repeats one body as distinct deliveries
"""
WARMUP = 20  # deliveries sent before a catch-up measurement (first build, connections)


def entity_body(key: str, n: int) -> bytes:
    doc = {"event_type": "data_updated", "entity": "customer", "id": key, "data": {"n": n}}
    return json.dumps({**doc, "version": n}, separators=(",", ":")).encode()


class Client:
    """A keep-alive HTTP/1.1 connection to one server (http.client: little client overhead)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.read()

    def deliver(self, body: bytes) -> int:
        """POST a signed delivery; its acknowledged position."""
        headers = {SIGNATURE_HEADER: sign(body), "Content-Type": "application/json"}
        status, data = self.request("POST", f"/hooks/{SOURCE}", body, headers)
        assert status == 202, (status, data)
        return json.loads(data)["position"]

    def row(self, key: str, min_position: int | None = None) -> tuple[int, bytes]:
        query = "" if min_position is None else f"?min_position={min_position}&wait=5"
        return self.request("GET", f"/v1/projections/entities/rows/customer/{key}{query}")

    def lag(self) -> int:
        """Events the `entities` projection has yet to apply."""
        status, data = self.request("GET", "/v1/projections/entities")
        assert status == 200, (status, data)
        return json.loads(data)["lag"]

    def settle(self, timeout: float = 120) -> float:
        """Wait until the projection has applied the whole log; the seconds that took."""
        began = time.monotonic()
        while self.lag() > 0 and time.monotonic() - began < timeout:
            time.sleep(0.2)
        return time.monotonic() - began

    def close(self) -> None:
        self.conn.close()


def write_config(path: Path, url: str) -> Path:
    path.write_text(
        CONFIG.format(url=url, source=SOURCE, secret_env=SECRET_ENV, header=SIGNATURE_HEADER)
        + entities_projection(SOURCE)
    )
    return path


def serve_argv(config: Path, port: int, *extra: str) -> list[str]:
    return [str(hookledger_bin()), "serve", "--config", str(config), "--port", str(port), *extra]


@contextlib.contextmanager
def background(argv: list[str], cpu: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process without a port (`hookledger project`), pinned to `cpu`, stopped at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            env=server_env(),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop(proc)


def catch_up(port: int, count: int) -> list[float]:
    """Send `count` deliveries one at a time; ms from each 202 to its row being readable."""
    client = Client(port)
    out: list[float] = []
    try:
        for i in range(-WARMUP, count):
            key = str(i % 500)
            position = client.deliver(entity_body(key, i + WARMUP))
            acked = time.perf_counter()
            status, data = client.row(key, position)
            elapsed = (time.perf_counter() - acked) * 1000
            assert status == 200 and json.loads(data)["data"]["n"] == i + WARMUP, (status, data)
            if i >= 0:
                out.append(elapsed)
    finally:
        client.close()
    return out


def point_reads(port: int, keys: int, seconds: float, rate: float) -> list[float]:
    """Read rows (no wait) at `rate` per second for `seconds`; each read's ms.

    Reads start on a fixed schedule; a read that starts late (the previous one was
    slow) is timed from its own start: waiting behind a slow read is not counted."""
    client = Client(port)
    out: list[float] = []
    try:
        start = time.perf_counter()
        for i in range(int(seconds * rate)):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            began = time.perf_counter()
            status, data = client.row(str(i % keys))
            out.append((time.perf_counter() - began) * 1000)
            assert status == 200, (status, data)
    finally:
        client.close()
    return out


def log_head(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
