"""Background ingest for bench/latency.py: wrk with bench/post.lua, paced to a target rate."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import LUA, REPO, SIGNATURE_HEADER, WrkStats, parse_wrk, sign

# post.lua posts one signed body; this adds a pause before each request of a connection,
# exponentially distributed with mean BENCH_DELAY_MS (wrk takes whole milliseconds: adding a
# uniform [0, 1) before the floor keeps the mean). Random pauses keep the connections from
# marching in step: a group commit acknowledges many at once, and equal pauses would send
# them back together, in bursts no set of independent senders produces.
PACED_LUA = """\
dofile("{post}")
local mean = tonumber(os.getenv("BENCH_DELAY_MS"))
function delay()
  return math.floor(-mean * math.log(1 - math.random()) + math.random())
end
"""


def load_body(event_type: str = "data_updated", size: int = 1024) -> bytes:
    """The 1 KiB delivery wrk repeats: an update of one `load` entity the projector folds.

    With another `event_type` the projection ignores it (its query filters it out)."""
    doc = {"event_type": event_type, "entity": "load", "id": "0", "version": 1, "data": {}}
    empty = len(json.dumps({**doc, "data": {"padding": ""}}, separators=(",", ":")))
    doc["data"] = {"padding": "x" * (size - empty)}
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == size, len(body)
    return body


@dataclass
class Wrk:
    """wrk, one thread, `connections` keep-alive connections, pinned to `cpu`."""

    binary: str
    connections: int
    cpu: int
    workdir: Path
    body: bytes
    source: str

    def start(self, port: int, seconds: float, delay_ms: float | None) -> subprocess.Popen[str]:
        """Post `body` for `seconds`, each connection pausing `delay_ms` (None: unpaced)."""
        body_file = self.workdir / "load-body.json"
        body_file.write_bytes(self.body)
        script = LUA
        if delay_ms is not None:
            script = self.workdir / "paced.lua"
            script.write_text(PACED_LUA.format(post=LUA))
        env = {
            **os.environ,
            "BENCH_BODY_FILE": str(body_file),
            "BENCH_SIGNATURE_HEADER": SIGNATURE_HEADER,
            "BENCH_SIGNATURE": sign(self.body),
            "BENCH_DELAY_MS": f"{delay_ms or 0:.3f}",
        }
        argv = ["taskset", "-c", str(self.cpu), self.binary, "-t1", f"-c{self.connections}"]
        argv += [f"-d{seconds:.0f}s", "--timeout", "10s", "--latency", "-s", str(script)]
        argv.append(f"http://127.0.0.1:{port}/hooks/{self.source}")
        return subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def run(self, port: int, seconds: float, delay_ms: float | None = None) -> WrkStats:
        return self.finish(self.start(port, seconds, delay_ms), seconds)

    @staticmethod
    def finish(proc: subprocess.Popen[str], seconds: float) -> WrkStats:
        text, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk exited {proc.returncode}:\n{text}")
        return parse_wrk(text, proc.args)  # type: ignore[arg-type]

    def maximum(self, port: int, seconds: float, runs: int = 2) -> WrkStats:
        """Unpaced, after a 2 s warm-up: the most the server answers (best of `runs`: on a
        shared machine, disturbance only ever lowers the rate)."""
        self.run(port, 2)
        return max((self.run(port, seconds) for _ in range(runs)), key=lambda s: s.rps)

    def pace_for(
        self, port: int, rate: float, most: float, settle: Callable[[], object]
    ) -> float | None:
        """The per-connection delay (ms) that makes wrk post about `rate`/s (None: unpaced).

        A connection sends one request per (delay + response time); the response time
        is estimated from short calibration runs and subtracted from connections / rate;
        `settle` is called before each (it waits for the projector to catch up)."""
        if rate >= 0.97 * most:
            return None  # as fast as the server goes
        period = self.connections / rate * 1000
        delay, best = period, (float("inf"), period)
        for _ in range(3):
            settle()
            got = self.run(port, 2, delay).rps
            best = min(best, (abs(got - rate), delay))
            if abs(got - rate) < 0.03 * rate:
                break
            response_ms = max(self.connections / got * 1000 - delay, 0.0)
            delay = max(period - response_ms, delay / 2, 0.5)  # a disturbed run: not too far
        return best[1]
