"""The columns outside the chain (SPEC 4.2): `duplicate_of` and `verification` are checked
against the log by `import` and `verify`, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from sqlalchemy import Engine, select, text

from ledger import integrity, marks, migrate, transfer
from ledger.errors import ImportRefused
from ledger.integrity import verify_ledger
from ledger.recorder import make_engine, read_head
from ledger.recorder.schema import events
from ledger.transfer import export_lines, import_lines
from tests.helpers import append, new_event


@pytest.fixture
def engines(db_url_factory) -> Iterator:
    """`fresh()` makes migrated engines on the test's backend, disposed afterwards."""
    made: list[Engine] = []

    def fresh() -> Engine:
        engine = make_engine(db_url_factory())
        migrate.upgrade(engine)
        made.append(engine)
        return engine

    yield fresh
    for engine in made:
        engine.dispose()


def seed(engine: Engine) -> None:
    """Six deliveries: two sources, a repeated id (5 repeats 1) and a repeated body
    under a new id (6 repeats the body of 2, marked as a body duplicate would be)."""
    append(
        engine,
        [
            new_event(b'{"n":1}', event_id="e1"),
            new_event(b'{"n":2}', event_id="e2"),
            new_event(b'{"n":3}', source="other", event_id="e1"),
            new_event(b'{"n":4}'),
            new_event(b'{"n":1}', event_id="e1"),
            new_event(b'{"n":2}', event_id="e-new"),
        ],
    )
    # as the body-digest dedup of SPEC 3 marks a replay under a new id
    tamper(engine, "UPDATE events SET duplicate_of = 2 WHERE position = 6")


def _bypass(engine: Engine, conn) -> None:
    if engine.dialect.name == "sqlite":
        conn.execute(text("DROP TRIGGER IF EXISTS events_no_update"))
    else:
        conn.execute(text("SET LOCAL session_replication_role = replica"))


def tamper(engine: Engine, statement: str) -> None:
    """Bypass the append-only guard the way someone with database access could."""
    with engine.begin() as conn:
        _bypass(engine, conn)
        conn.execute(text(statement))


def altered(lines: list[bytes], position: int, drop: str | None = None, **changes) -> list[bytes]:
    doc = orjson.loads(lines[position - 1])
    doc.update(changes)
    if drop is not None:
        del doc[drop]
    copy = list(lines)
    copy[position - 1] = orjson.dumps(doc) + b"\n"
    return copy


def assert_nothing_written(engine: Engine) -> None:
    with engine.connect() as conn:
        assert read_head(conn)[0] == 0
        assert conn.execute(select(events.c.position)).first() is None


def test_the_issues_tampering_is_refused_by_import_and_reported_by_verify(engines):
    """e2 rewritten as a duplicate of e1 and its verification removed (issue 13, item 4)."""
    source = engines()
    append(source, [new_event(b'{"n":1}', event_id="e1"), new_event(b'{"n":2}', event_id="e2")])
    lines = altered(list(export_lines(source)), 2, drop="verification", duplicate_of=1)
    target = engines()
    with pytest.raises(ImportRefused, match=r"^line 2\b.*verification"):
        import_lines(target, lines)
    assert_nothing_written(target)
    # duplicate_of alone, with verification left in place
    lines = altered(list(export_lines(source)), 2, duplicate_of=1)
    with pytest.raises(ImportRefused, match=r"^line 2 \(position 2\): duplicate_of 1 is not"):
        import_lines(target, lines)
    assert_nothing_written(target)

    tamper(source, "UPDATE events SET duplicate_of = 1, verification = '' WHERE position = 2")
    result = verify_ledger(source)
    assert (result.ok, result.first_bad_position, result.checked) == (False, 2, 1)
    assert "verification" in result.reason


def test_marks_of_an_honest_log_pass_both_ways(engines):
    """Repeated ids marked, a repeated body marked under a new id, other sources apart."""
    source = engines()
    seed(source)
    assert verify_ledger(source).ok
    target = engines()
    assert import_lines(target, list(export_lines(source))) == 6
    assert verify_ledger(target).ok


# rule: (position broken, {column: value written there}, what the refusal says)
RULES: dict[str, tuple[int, dict[str, object], str]] = {
    "duplicate of a later position": (4, {"duplicate_of": 5}, "is not an earlier position"),
    "duplicate of itself": (4, {"duplicate_of": 4}, "is not an earlier position"),
    "duplicate of position 0": (4, {"duplicate_of": 0}, "is not an earlier position"),
    "duplicate of another source": (3, {"duplicate_of": 1}, "is not an earlier delivery"),
    "duplicate of another id and body": (4, {"duplicate_of": 2}, "is not an earlier delivery"),
    "repeated id not marked": (5, {"duplicate_of": None}, "repeats position 1"),
    "verification unknown": (4, {"verification": "trusted"}, "verification is 'trusted'"),
    "verification null": (4, {"verification": None}, "verification is None"),
}


@pytest.mark.parametrize("rule", RULES)
def test_import_refuses_each_broken_mark_naming_its_line(engines, rule):
    position, changes, reason = RULES[rule]
    source = engines()
    seed(source)
    target = engines()
    with pytest.raises(ImportRefused, match=rf"^line {position} \(position {position}\):") as e:
        import_lines(target, altered(list(export_lines(source)), position, **changes))
    assert reason in str(e.value)
    assert_nothing_written(target)


@pytest.mark.parametrize("rule", [r for r in RULES if RULES[r][1].get("verification", 1)])
def test_verify_reports_each_broken_mark(engines, rule):
    position, changes, reason = RULES[rule]
    engine = engines()
    seed(engine)
    column, value = next(iter(changes.items()))
    literal = "NULL" if value is None else repr(value)
    tamper(engine, f"UPDATE events SET {column} = {literal} WHERE position = {position}")
    result = verify_ledger(engine)
    assert (result.ok, result.first_bad_position) == (False, position), result
    assert result.checked == position - 1
    assert reason in result.reason


def test_verify_reports_a_verification_emptied_in_place(engines):
    engine = engines()
    seed(engine)
    tamper(engine, "UPDATE events SET verification = '' WHERE position = 3")
    result = verify_ledger(engine)
    assert (result.ok, result.first_bad_position) == (False, 3)


def test_marks_are_checked_across_chunks_through_the_database(engines, monkeypatch):
    """A repeat whose first delivery lies in an earlier chunk is found by asking the
    database, not a dict of every id: the checks hold with chunks of two rows."""
    monkeypatch.setattr(transfer, "CHUNK", 2)
    monkeypatch.setattr(integrity, "CHUNK", 2)
    source = engines()
    seed(source)
    lines = list(export_lines(source))
    assert import_lines(engines(), lines) == 6
    target = engines()
    with pytest.raises(ImportRefused, match=r"^line 5 \(position 5\): .*repeats position 1"):
        import_lines(target, altered(lines, 5, duplicate_of=None))
    assert_nothing_written(target)
    with pytest.raises(ImportRefused, match=r"^line 6 \(position 6\): duplicate_of 1 is not"):
        import_lines(target, altered(lines, 6, duplicate_of=1))
    tamper(source, "UPDATE events SET duplicate_of = NULL WHERE position = 5")
    result = verify_ledger(source)
    assert (result.ok, result.first_bad_position) == (False, 5)
    assert verify_ledger(source, start=6).ok  # from 6 on, only 6's own marks count


def test_the_first_bad_line_is_named_whichever_rule_it_breaks(engines):
    """A broken mark on line 2 is reported before a broken chain on line 4."""
    source = engines()
    seed(source)
    lines = altered(list(export_lines(source)), 2, verification="bogus")
    lines = altered(lines, 4, event_type="forged")
    target = engines()
    with pytest.raises(ImportRefused, match=r"^line 2 "):
        import_lines(target, lines)
    tamper(source, "UPDATE events SET verification = 'bogus' WHERE position = 2")
    tamper(source, "UPDATE events SET event_type = 'forged' WHERE position = 4")
    assert verify_ledger(source).first_bad_position == 2


def test_check_marks_is_a_pure_rule():
    row = marks.Mark(2, "s", "a", "d2", "verified", None)
    assert marks.check_marks([row], {("s", "a"): 1}, {}) == (
        2,
        "event id 'a' of source 's' repeats position 1 but duplicate_of is null",
    )
    body_dup = marks.Mark(2, "s", "b", "d1", "fetched", 1)
    first = marks.Mark(1, "s", "a", "d1", "readmitted", None)
    assert marks.check_marks([first, body_dup], {}, {}) is None
    assert marks.check_marks([body_dup], {}, {1: first}) is None
    assert marks.check_marks([body_dup], {}, {})[1] == "duplicate_of 1 names no event"
