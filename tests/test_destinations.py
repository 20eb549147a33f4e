"""Destinations on both backends, against a real receiver that verifies every delivery
with the official `standardwebhooks` library: order, retries, dead letters, 410,
replay, redelivery, handlers, filters, and where a new destination starts."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
from sqlalchemy import Engine, select

from destinations import store
from destinations.spec import Destination, parse
from destinations.worker import DeliveryWorker
from ledger.errors import ConfigError
from projections.schema import delivery_attempts
from projections.worker import wait_until as projector_wait_until
from tests.helpers import append, new_event
from tests.receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def spec_of(name: str = "out", **raw) -> Destination:
    return parse(name, raw, "test.toml", {"SIGNING": SECRET}, None)


def body(key: str, n: int, type_: str = "thing.updated") -> bytes:
    return orjson.dumps({"type": type_, "key": key, "n": n})


def events(engine: Engine, pairs: list[tuple[str, int]], type_: str = "thing.updated") -> None:
    append(
        engine,
        [new_event(body(k, n, type_), event_type=type_, event_id=f"e-{k}-{n}") for k, n in pairs],
    )


@pytest.fixture
def deliver(engine) -> Iterator[Callable[..., DeliveryWorker]]:
    """Start a delivery worker over `specs` in a thread; stopped after the test."""
    started: list[tuple[DeliveryWorker, threading.Thread]] = []

    def start(*specs: Destination, owner: str | None = None) -> DeliveryWorker:
        worker = DeliveryWorker(engine, {s.name: s for s in specs}, owner=owner, idle_poll=0.05)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=20)
        assert not thread.is_alive()


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    return projector_wait_until(predicate, timeout, interval=0.02)


def entry(engine: Engine, spec: Destination) -> dict:
    with engine.connect() as conn:
        return store.describe(conn, spec, store.read_head(conn)[0])


def test_every_event_arrives_signed_in_order_with_its_headers(engine, deliver):
    events(engine, [("a", 0)])  # before the destination: `start = "head"` leaves it out
    with Receiver(SECRET) as r:
        spec = spec_of(url=r.url, secret_env="SIGNING")
        deliver(spec)
        assert wait_until(lambda: entry(engine, spec)["state"] == "live")
        events(engine, [("a", 1), ("b", 1), ("a", 2)])
        assert r.wait_for(3)
        assert r.positions() == [2, 3, 4]
        assert all(d.verified for d in r.deliveries)
        first = r.deliveries[0]
        assert first.webhook_id == "hl-2"
        assert first.body == body("a", 1)
        assert first.headers["content-type"] == "application/json"
        assert first.headers["ledger-position"] == "2"
        assert first.headers["ledger-source"] == "app"
        assert first.headers["ledger-event-type"] == "thing.updated"
        assert first.headers["ledger-event-id"] == "e-a-1"
        assert wait_until(lambda: entry(engine, spec)["position"] == 4)
        got = entry(engine, spec)
        assert (got["lag"], got["delivered"], got["in_flight"]) == (0, 3, 0)
        assert got["last_attempt"]["status"] == 204


def test_a_failing_key_holds_back_only_its_own_later_events(engine, deliver):
    # position 1 (key a) fails twice; with order = "key", b's events go on meanwhile
    def plan(position: int, seen: int) -> str:
        return "fail" if position == 1 and seen < 2 else "ok"

    with Receiver(SECRET, plan) as r:
        spec = spec_of(
            url=r.url,
            secret_env="SIGNING",
            order="key",
            key="/key",
            start="beginning",
            retry_seconds=[0.3],
        )
        events(engine, [("a", 1), ("b", 1), ("a", 2), ("b", 2)])
        deliver(spec)
        assert r.wait_for(4)
        delivered = r.positions()
        assert delivered.index(1) < delivered.index(3)  # a in order
        assert delivered.index(2) < delivered.index(4)  # b in order
        assert delivered.index(2) < delivered.index(1)  # b did not wait for a
        assert r.seen(1) == 3
        assert wait_until(lambda: entry(engine, spec)["position"] == 4)
    with engine.connect() as conn:
        tries = conn.execute(
            select(delivery_attempts.c.attempt, delivery_attempts.c.outcome)
            .where(delivery_attempts.c.position == 1)
            .order_by(delivery_attempts.c.id)
        ).all()
    assert [tuple(t) for t in tries] == [(1, "failed"), (2, "failed"), (3, "delivered")]


def test_with_log_order_a_failing_event_holds_back_every_later_one(engine, deliver):
    def plan(position: int, seen: int) -> str:
        return "fail" if position == 1 and seen < 2 else "ok"

    with Receiver(None, plan) as r:
        spec = spec_of(url=r.url, start="beginning", retry_seconds=[0.2])
        events(engine, [("a", 1), ("b", 1), ("c", 1)])
        deliver(spec)
        assert r.wait_for(3)
        assert r.positions() == [1, 2, 3]
        assert r.positions(delivered=False) == [1, 1, 1, 2, 3]


def test_dead_with_halt_fails_the_destination_until_retry_or_skip(engine, deliver):
    broken = {"on": True}
    with Receiver(None, lambda p, seen: "fail" if p == 2 and broken["on"] else "ok") as r:
        spec = spec_of(url=r.url, start="beginning", retry_seconds=[0.05], max_attempts=3)
        events(engine, [("a", 1), ("a", 2), ("a", 3)])
        deliver(spec)
        assert wait_until(lambda: entry(engine, spec)["state"] == "failed")
        got = entry(engine, spec)
        assert (got["position"], got["failed_position"]) == (1, 2)
        assert r.positions(delivered=False).count(2) == 3
        assert 3 not in r.positions(delivered=False)
        with pytest.raises(store.DestinationRefused):
            store.resume(engine, spec.name)
        broken["on"] = False
        store.retry(engine, spec.name)
        assert r.wait_for(3)
        assert r.positions() == [1, 2, 3]
        assert wait_until(lambda: entry(engine, spec)["position"] == 3)
        assert entry(engine, spec)["state"] == "live"


def test_skip_records_the_dead_letter_and_goes_on(engine, deliver):
    with Receiver(None, lambda p, seen: "fail" if p == 2 else "ok") as r:
        spec = spec_of(url=r.url, start="beginning", retry_seconds=[0.05], max_attempts=2)
        events(engine, [("a", 1), ("a", 2), ("a", 3)])
        deliver(spec)
        assert wait_until(lambda: entry(engine, spec)["state"] == "failed")
        store.skip(engine, spec.name)
        assert r.wait_for(2)
        assert r.positions() == [1, 3]
        assert wait_until(lambda: entry(engine, spec)["position"] == 3)
    with engine.connect() as conn:
        dead = store.dead(conn, spec.name)
    assert [d["position"] for d in dead] == [2]
    assert dead[0]["last_attempt"]["status"] == 500
    assert entry(engine, spec)["dead"] == 1


def test_on_dead_skip_goes_on_by_itself(engine, deliver):
    with Receiver(None, lambda p, seen: "fail" if p == 1 else "ok") as r:
        spec = spec_of(
            url=r.url, start="beginning", retry_seconds=[0.05], max_attempts=2, on_dead="skip"
        )
        events(engine, [("a", 1), ("a", 2)])
        deliver(spec)
        assert r.wait_for(1)
        assert wait_until(lambda: entry(engine, spec)["position"] == 2)
        assert r.positions() == [2]
        assert entry(engine, spec)["dead"] == 1
        assert entry(engine, spec)["state"] == "live"


def test_410_pauses_without_counting_and_resume_attempts_again(engine, deliver):
    gone = {"on": True}
    with Receiver(None, lambda p, seen: "gone" if gone["on"] else "ok") as r:
        spec = spec_of(url=r.url, start="beginning", max_attempts=1)
        events(engine, [("a", 1), ("a", 2)])
        deliver(spec)
        assert wait_until(lambda: entry(engine, spec)["state"] == "paused")
        assert "410" in entry(engine, spec)["reason"]
        time.sleep(0.3)
        assert r.positions(delivered=False) == [1]  # paused: not tried again
        gone["on"] = False
        store.resume(engine, spec.name)
        assert r.wait_for(2)
        assert r.positions() == [1, 2]  # max_attempts = 1, yet the 410 did not count


@pytest.mark.parametrize("answer", ["close", "redirect", "slow"])
def test_a_closed_connection_a_redirect_and_a_timeout_are_failed_attempts(engine, deliver, answer):
    arrivals = itertools.count()
    with Receiver(None, lambda p, seen: answer if next(arrivals) == 0 else "ok", slow_s=1.0) as r:
        spec = spec_of(url=r.url, start="beginning", retry_seconds=[0.1], timeout_seconds=0.3)
        events(engine, [("a", 1)])
        deliver(spec)
        assert wait_until(lambda: entry(engine, spec)["delivered"] == 1)
    with engine.connect() as conn:
        tries, _ = store.attempts(conn, spec.name, 1, None, 10)
    assert [t["outcome"] for t in tries] == ["delivered", "failed"]
    error = tries[1]["error"]
    assert {"close": "RemoteProtocolError", "redirect": "not followed", "slow": "no answer"}[
        answer
    ] in error


def test_replay_hands_over_again_from_a_position_with_the_same_ids(engine, deliver):
    with Receiver(SECRET) as r:
        spec = spec_of(url=r.url, secret_env="SIGNING", start="beginning")
        events(engine, [("a", 1), ("a", 2), ("a", 3)])
        deliver(spec)
        assert r.wait_for(3)
        assert wait_until(lambda: entry(engine, spec)["position"] == 3)
        store.replay(engine, spec.name, 2)
        assert r.wait_for(5)
        assert r.positions() == [1, 2, 3, 2, 3]
        assert [d.webhook_id for d in r.deliveries[3:]] == ["hl-2", "hl-3"]
        assert all(d.verified for d in r.deliveries)


def test_redeliver_hands_one_event_over_again(engine, deliver):
    with Receiver(None) as r:
        spec = spec_of(url=r.url, start="beginning")
        events(engine, [("a", 1), ("a", 2)])
        deliver(spec)
        assert r.wait_for(2)
        store.redeliver(engine, spec.name, 1)
        assert r.wait_for(3)
        assert r.positions() == [1, 2, 1]
        time.sleep(0.3)
        assert r.positions() == [1, 2, 1]  # once, not again


def test_filters_prefixes_duplicates_and_a_numeric_start(engine, deliver):
    with Receiver(None) as r:
        spec = spec_of(url=r.url, types=["side.*", "exact"], start=2)
        append(
            engine,
            [
                new_event(b'{"n":1}', event_type="side.a"),  # 1: before start
                new_event(b'{"n":2}', event_type="side.b", event_id="dup"),  # 2
                new_event(b'{"n":3}', event_type="sideways"),  # 3: not a match
                new_event(b'{"n":4}', event_type="Side.c"),  # 4: not a match (case)
                new_event(b'{"n":5}', event_type="exact"),  # 5
                new_event(b'{"n":2}', event_type="side.b", event_id="dup"),  # 6: a duplicate
            ],
        )
        with engine.connect() as conn:
            assert store.read(conn, spec, 0, 6, 10)[-1].position == 5
        deliver(spec)
        assert r.wait_for(2)
        assert wait_until(lambda: entry(engine, spec)["position"] == 6)
        assert r.positions() == [2, 5]


def test_a_handler_is_called_with_the_event_and_a_raise_is_retried(engine, deliver, monkeypatch):
    import types

    calls: list[tuple[int, object]] = []

    def on_event(event) -> None:
        calls.append((event.position, event.json()))
        if len(calls) == 1:
            raise RuntimeError("the mailer is down")

    module = types.ModuleType("hl_test_handlers")
    module.on_event = on_event
    monkeypatch.setitem(__import__("sys").modules, "hl_test_handlers", module)
    spec = spec_of(handler="hl_test_handlers:on_event", start="beginning", retry_seconds=[0.05])
    events(engine, [("a", 1)])
    deliver(spec)
    assert wait_until(lambda: entry(engine, spec)["delivered"] == 1)
    assert [p for p, _ in calls] == [1, 1]
    assert calls[1][1] == {"type": "thing.updated", "key": "a", "n": 1}
    with engine.connect() as conn:
        tries, _ = store.attempts(conn, spec.name, None, None, 10)
    assert tries[-1]["error"] == "RuntimeError: the mailer is down"


def test_a_second_worker_takes_over_a_stopped_ones_destination(engine, deliver):
    with Receiver(None) as r:
        spec = spec_of(url=r.url, start="beginning")
        first = deliver(spec, owner="first")
        events(engine, [("a", 1)])
        assert r.wait_for(1)
        first.stop()
        deliver(spec, owner="second")
        events(engine, [("a", 2)])
        assert r.wait_for(2)
        assert r.positions() == [1, 2]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({}, "exactly one of url"),
        ({"url": "ftp://x/"}, "http:// or https://"),
        ({"url": "http://x/", "order": "key"}, "required by order"),
        ({"url": "http://x/", "secret_env": "BAD"}, "not a Standard Webhooks secret"),
        ({"url": "http://x/", "types": []}, "matches nothing"),
        ({"url": "http://x/", "start": True}, "got a boolean"),
        ({"url": "http://x/", "types": ["a*b"]}, "prefix ending in one *"),
        ({"url": "http://x/", "on_dead": "drop"}, "'halt' or 'skip'"),
        ({"url": "http://x/", "start": "now"}, "'head', 'beginning' or a position"),
        ({"url": "http://x/", "retries": 3}, "unknown key"),
        ({"handler": "no_such_module_here:fn"}, "cannot import"),
    ],
)
def test_a_bad_destination_is_a_one_line_config_error(raw, problem):
    with pytest.raises(ConfigError) as e:
        parse("out", raw, "test.toml", {"BAD": "not base64!"}, None)
    assert problem in str(e.value)
    assert str(e.value).startswith("test.toml: destinations.out")


def test_an_unset_signing_secret_sends_nothing_and_says_so(engine, deliver):
    with Receiver(SECRET) as r:
        spec = parse(
            "out", {"url": r.url, "secret_env": "UNSET", "start": "beginning"}, "t", {}, None
        )
        assert not spec.configured
        events(engine, [("a", 1)])
        deliver(spec)
        time.sleep(0.5)
        assert r.deliveries == []  # never unsigned
        got = entry(engine, spec)
        assert got["configured"] is False and "UNSET is unset" in got["reason"]


def test_an_attempt_an_older_plan_finishes_after_a_replay_does_not_count_in_the_new_round(
    engine, deliver
):
    from destinations.plan import Journal

    with Receiver(None) as r:
        spec = spec_of(url=r.url, start="beginning")
        events(engine, [("a", 1), ("a", 2), ("a", 3)])
        worker = deliver(spec)
        assert r.wait_for(3)
        assert wait_until(lambda: entry(engine, spec)["position"] == 3)
        worker.stop()
        with engine.connect() as conn:
            old = store.saved(conn, spec.name)
        store.replay(engine, spec.name, 1)
        # the old plan's late outcome for position 3: written, but refused as a plan
        late = Journal()
        late.attempts.append(
            {
                "destination": spec.name,
                "position": 3,
                "attempt": 1,
                "generation": old.generation,
                "started_at_us": 0,
                "outcome": "delivered",
                "status": 204,
                "error": None,
                "duration_us": 1,
                "response": None,
            }
        )
        assert not store.flush(engine, spec.name, old.generation, old.position, late, 3)
        with engine.connect() as conn:
            fresh = store.saved(conn, spec.name)
        assert fresh.position == 0 and 3 not in fresh.done  # the replay hands 3 over again
        deliver(spec)
        assert r.wait_for(6)
        assert r.positions() == [1, 2, 3, 1, 2, 3]
