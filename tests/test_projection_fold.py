"""The declarative fold and the version ordering guard, pure (no database)."""

from __future__ import annotations

import orjson
import pytest

from projections.declarative import Definition, fold
from projections.model import Event
from projections.ordering import VersionError, is_newer, version_key

ENTITIES = Definition.parse(
    "entities",
    {
        "types": ["data_updated", "data_deleted"],
        "key": ["/entity", "/id"],
        "object": "/data",
        "version": "/version",
        "delete_on": ["data_deleted"],
        "columns": {"name": "/data/name", "age": {"path": "/data/age", "type": "integer"}},
    },
    "test.toml",
)


def ev(position, version, kind="data_updated", key="1", dup=None, **data):
    doc = {"event_type": kind, "entity": "customer", "id": key, "version": version, "data": data}
    return Event(position, "app", None, kind, 0, orjson.dumps(doc), dup)


def test_newest_version_wins_whatever_the_arrival_order():
    result = fold(ENTITIES, [ev(1, 1, name="a"), ev(2, 3, name="c"), ev(3, 2, name="b")], {})
    row = result.rows[("customer", "1")]
    assert (row.data, row.version, row.position) == ({"name": "c"}, "3", 2)


def test_equal_versions_tie_break_on_position():
    result = fold(ENTITIES, [ev(1, 5, name="first"), ev(2, 5, name="second")], {})
    assert result.rows[("customer", "1")].data == {"name": "second"}


def test_a_tombstone_keeps_a_stale_update_from_resurrecting_the_row():
    events = [ev(1, 1, name="a"), ev(2, 2, kind="data_deleted"), ev(3, 1, name="stale")]
    row = fold(ENTITIES, events, {}).rows[("customer", "1")]
    assert row.deleted is True
    assert row.version == "2"


def test_duplicates_are_skipped():
    events = [ev(1, 1, name="a"), ev(2, 9, name="redelivered", dup=1)]
    assert fold(ENTITIES, events, {}).rows[("customer", "1")].data == {"name": "a"}


def test_typed_columns():
    row = fold(ENTITIES, [ev(1, 1, name="a", age="42")], {}).rows[("customer", "1")]
    assert row.columns == {"name": "a", "age": 42}
    bad = fold(ENTITIES, [ev(1, 1, age="old")], {})
    assert bad.halted_at == 1 and "integer" in bad.errors[0][1]


def test_integers_past_64_bits_are_an_error_and_numbers_are_floats():
    """An `integer` column is a BIGINT on both backends: a wider value is the event's
    error, not a driver failure that would stop the projector; a `number` is a float."""
    big = fold(ENTITIES, [ev(1, 1, age=2**63)], {})
    assert big.halted_at == 1 and "integer" in big.errors[0][1]
    edge = fold(ENTITIES, [ev(1, 1, age=str(2**63 - 1))], {}).rows[("customer", "1")]
    assert edge.columns["age"] == 2**63 - 1
    score = Definition.parse(
        "s", {"key": "/id", "columns": {"x": {"path": "/x", "type": "number"}}}, "t"
    )
    row = fold(score, [Event(1, "s", None, "t", 0, b'{"id": "1", "x": 3}')], {}).rows[("1",)]
    assert row.columns["x"] == 3.0 and isinstance(row.columns["x"], float)


def test_missing_version_halts_at_the_event():
    doc = orjson.dumps({"entity": "customer", "id": "1", "data": {}})
    events = [ev(1, 1, name="a"), Event(2, "app", None, "data_updated", 0, doc), ev(3, 2)]
    result = fold(ENTITIES, events, {})
    assert result.halted_at == 2
    assert list(result.rows) == [("customer", "1")]
    assert result.rows[("customer", "1")].position == 1  # events after the halt are not applied


def test_skip_records_the_error_and_goes_on():
    skip = Definition.parse("e", {"key": "/id", "version": "/v", "on_error": "skip"}, "t")
    events = [
        Event(1, "s", None, "t", 0, b'{"id": "1", "v": 1}'),
        Event(2, "s", None, "t", 0, b"not json"),
        Event(3, "s", None, "t", 0, b'{"id": "1", "v": 2}'),
    ]
    result = fold(skip, events, {})
    assert result.halted_at is None
    assert [p for p, _ in result.errors] == [2]
    assert result.rows[("1",)].version == "2"


def test_versions_of_different_kinds_are_an_error():
    events = [ev(1, 3, name="a"), ev(2, "2026-01-01T00:00:00Z", name="b")]
    result = fold(ENTITIES, events, {})
    assert result.halted_at == 2 and "number" in result.errors[0][1]


@pytest.mark.parametrize(
    "a, b",
    [
        ("2", "10"),
        ("1.5", "2"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5+00:00"),
        ("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z"),
        ("abc", "abd"),
    ],
)
def test_versions_compare_by_kind(a, b):
    assert is_newer(b, 1, a, 2)
    assert not is_newer(a, 3, b, 2)


def test_version_kinds():
    assert version_key("10")[0] == "number"
    assert version_key("2026-11-28T05:00:00Z")[0] == "instant"
    assert version_key("v1")[0] == "string"
    with pytest.raises(VersionError):
        is_newer("1", 2, "x", 1)


def test_a_nul_in_a_key_or_a_text_column_is_the_events_error():
    """PostgreSQL text cannot hold NUL: the event is an error on both backends alike,
    not a driver failure that stops the projector."""
    nul_key = orjson.dumps({"entity": "customer", "id": "a\x00b", "version": 1, "data": {}})
    result = fold(ENTITIES, [Event(1, "app", None, "data_updated", 0, nul_key)], {})
    assert result.halted_at == 1 and "NUL" in result.errors[0][1]
    result = fold(ENTITIES, [ev(1, 1, name="x\x00y")], {})
    assert result.halted_at == 1 and "NUL" in result.errors[0][1]
    assert fold(ENTITIES, [ev(1, 1, name="x y")], {}).halted_at is None
