"""The pull feed `GET /v1/events?wait=S`: a real server holds the request until a
matching event is appended, and answers empty after S seconds, on both backends."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ServerProcess, write_config
from tests.helpers import Poll

CONFIG = """
database_url = "{url}"

[sources.a]
verifier = "none"
event_id = "header:X-Event-Id"
event_type = "/type"

[sources.b]
verifier = "none"
event_type = "/type"
"""


@pytest.fixture
def serve(tmp_path, db_url):
    servers: list[ServerProcess] = []

    def start(workers: int = 1) -> ServerProcess:
        path = write_config(tmp_path / "hookledger.toml", CONFIG.format(url=db_url))
        servers.append(ServerProcess(path, {}, workers=workers))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _post(server: ServerProcess, source: str, kind: str, event_id: str | None = None) -> int:
    headers = {"X-Event-Id": event_id} if event_id else {}
    r = httpx.post(f"{server.url}/hooks/{source}", json={"type": kind}, headers=headers)
    assert r.status_code in (200, 202), r.text
    return r.json()["position"]


def _poll(url: str) -> Poll:
    return Poll(lambda: httpx.get(url, timeout=60))


def _positions(response: httpx.Response | None) -> list[int]:
    assert response is not None and response.status_code == 200, response
    return [e["position"] for e in response.json()["events"]]


def test_a_long_poll_answers_when_a_matching_event_arrives(serve):
    server = serve()
    first = _post(server, "a", "x.created")
    poll = _poll(f"{server.url}/v1/events?after={first}&source=b&wait=20")
    poll.start()
    time.sleep(0.5)  # the poll is held; an event of another source does not end it
    _post(server, "a", "x.updated")
    time.sleep(0.5)
    assert poll.is_alive()
    wanted = _post(server, "b", "y.created")
    poll.join(15)
    assert not poll.is_alive() and _positions(poll.answer) == [wanted]
    assert 1.0 <= poll.held < 10  # held past both posts, answered well before its 20 s


def test_a_long_poll_with_nothing_new_answers_empty_after_its_wait(serve):
    server = serve()
    head = _post(server, "a", "x.created")
    started = time.monotonic()
    r = httpx.get(f"{server.url}/v1/events", params={"after": head, "wait": "0.6"})
    held = time.monotonic() - started
    assert r.json() == {"events": [], "next": None}
    assert held >= 0.6
    # with something there already, no wait at all
    r = httpx.get(f"{server.url}/v1/events", params={"after": 0, "wait": "20"}, timeout=5)
    assert _positions(r) == [head]


def test_wait_and_event_id_are_checked_and_event_id_filters(serve):
    server = serve()
    one = _post(server, "a", "x.created", "evt_1")
    _post(server, "a", "x.created", "evt_2")
    again = _post(server, "a", "x.created", "evt_1")
    r = httpx.get(f"{server.url}/v1/events", params={"event_id": "evt_1"})
    assert _positions(r) == [one, again]
    assert r.json()["events"][1]["duplicate_of"] == one
    for bad in ("31", "-1", "soon", "nan"):
        r = httpx.get(f"{server.url}/v1/events", params={"wait": bad})
        assert r.status_code == 400 and r.json()["error"] == "bad_request", bad
        assert "wait must be" in r.json()["detail"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_long_poll_sees_an_append_made_by_another_process(serve):
    """Two API processes: whichever holds the poll, the other may take the append."""
    server = serve(workers=2)
    head = _post(server, "a", "x.created")
    polls = [_poll(f"{server.url}/v1/events?after={head}&wait=20") for _ in range(4)]
    for poll in polls:
        poll.start()
    time.sleep(0.5)
    wanted = _post(server, "a", "x.updated")
    for poll in polls:
        poll.join(15)
        assert not poll.is_alive() and _positions(poll.answer) == [wanted]
        assert poll.held < 10
