"""`hookledger listen --forward-to URL` as a developer runs it: against a real server,
forwarding to a real local receiver, keeping its place across restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.receiver import Receiver

CONFIG = """
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
event_type = "/event_type"
"""


def post(server, n: int, kind: str = "data_updated") -> int:
    answer = httpx.post(
        f"{server.url}/hooks/app",
        content=b'{"event_type":"%s","n":%d}' % (kind.encode(), n),
        headers={"X-Event-Id": f"e{n}", "content-type": "application/json; charset=utf-8"},
    )
    assert answer.status_code in (200, 202), answer.text  # 200: a re-delivery, logged too
    return int(answer.json()["position"])


def listen(tmp_path: Path, server, target: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "listen",
            "--forward-to",
            target,
            "--url",
            server.url,
            "--state",
            str(tmp_path / "listen.json"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HOOKLEDGER_CONFIG": ""},
    )


def stopped(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.slow
def test_listen_forwards_each_event_then_resumes_where_it_stopped(serve, tmp_path):
    server = serve(f'database_url = "sqlite:///{tmp_path / "l.db"}"\n' + CONFIG)
    first = post(server, 0)  # before listen: --from takes it in
    with Receiver(None) as r:
        proc = listen(tmp_path, server, r.url, "--from", str(first))
        post(server, 1)
        post(server, 2, kind="other")
        assert r.wait_for(3)
        out, err = stopped(proc)
        assert r.positions() == [1, 2, 3]
        sent = r.deliveries[0]
        assert sent.body == b'{"event_type":"data_updated","n":0}'
        assert sent.headers["content-type"] == "application/json; charset=utf-8"
        assert sent.headers["webhook-id"] == "hl-1"
        assert sent.headers["ledger-source"] == "app"
        assert sent.headers["ledger-event-type"] == "data_updated"
        assert sent.headers["ledger-event-id"] == "e0"
        lines = out.splitlines()
        assert lines[0].startswith("#1 app data_updated e0 -> 204"), out
        assert len(lines) == 3
        assert "forwarding events after position 0" in err

        # a second run resumes after the last forwarded event: nothing twice
        post(server, 3)
        proc = listen(tmp_path, server, r.url, "--type", "data_updated")
        post(server, 4, kind="other")  # filtered out by --type
        post(server, 5)
        assert r.wait_for(5)
        time.sleep(0.5)
        stopped(proc)
        assert r.positions() == [1, 2, 3, 4, 6]


def test_listen_starts_at_the_head_and_says_when_the_target_fails(serve, tmp_path):
    server = serve(f'database_url = "sqlite:///{tmp_path / "l.db"}"\n' + CONFIG)
    post(server, 0)
    proc = listen(tmp_path, server, "http://127.0.0.1:9/nothing-listens")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (tmp_path / "listen.json").exists():
        post(server, 1)
        time.sleep(0.5)
    out, _ = stopped(proc)
    assert "#1 " not in out  # the event before the start is not forwarded
    assert "-> failed: ConnectError" in out
