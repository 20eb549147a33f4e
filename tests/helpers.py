"""Small builders shared by tests."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable

import httpx
from sqlalchemy import Engine

from ledger.recorder import Appended, NewEvent, append_batch, writer

_clock = itertools.count(1_700_000_000_000_000, 1000)


def new_event(
    body: bytes = b"{}",
    source: str = "app",
    event_id: str | None = None,
    event_type: str | None = None,
    headers: str = '[["content-type","application/json"]]',
    query: str = "",
) -> NewEvent:
    return NewEvent(
        source=source,
        received_at_us=next(_clock),
        event_id=event_id,
        event_type=event_type,
        query=query,
        headers=headers,
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        content_type="application/json",
        remote_addr="127.0.0.1",
        verification="verified",
    )


def append(engine: Engine, events: list[NewEvent]) -> list[Appended]:
    """Append in one committed transaction, as the group-commit writer does."""
    with writer(engine.connect()) as conn, conn.begin():
        return append_batch(conn, events)


def stored_bodies(url: str) -> list[bytes | None]:
    """Every body in the log at `url`, in position order (opens and closes its own engine)."""
    from ledger.recorder import iter_events, make_engine

    engine = make_engine(url)
    try:
        return [r.body for r in iter_events(engine)]
    finally:
        engine.dispose()


ERROR_KEYS = {"error", "detail"}


def assert_error(response, status: int | None = None, code: str | None = None) -> dict:
    """The one JSON error body: exactly `error` and `detail`, both non-empty text; with
    `status` and `code`, those too. Returns the body."""
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.status_code,
        response.headers,
        response.content[:200],
    )
    doc = response.json()
    assert set(doc) == ERROR_KEYS, doc
    assert isinstance(doc["error"], str) and doc["error"]
    assert isinstance(doc["detail"], str) and doc["detail"]
    if code is not None:
        assert doc["error"] == code, doc
    return doc


class Poll(threading.Thread):
    """One long poll in the background: its answer and how long it was held.

    `get` sends the request: to a real server, or through an in-process TestClient."""

    def __init__(self, get: Callable[[], httpx.Response]) -> None:
        super().__init__(daemon=True)
        self.get, self.held = get, 0.0
        self.answer: httpx.Response | None = None

    def run(self) -> None:
        started = time.monotonic()
        self.answer = self.get()
        self.held = time.monotonic() - started
