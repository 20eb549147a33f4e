"""Reads that must not grow with the log (SPEC 7), checked with each planner's own EXPLAIN on
tables large enough, and analyzed, for a scan to look tempting: the console chart reads
only its time window, and a projection's declared columns and `position` are indexed so
filters, sorts and the changes feed read only the rows they return."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event

from api.console.event_log import MINUTE_US, minute_counts
from ledger.recorder import writer
from projections import versions
from projections.reads import live_view, select_changes, select_rows
from projections.worker import Worker
from tests.projection_support import drain, projectors_for

OLD_EVENTS = 30_000
RECENT_EVENTS = 50
DAY_US = 24 * 60 * MINUTE_US


def plan_of(engine: Engine, run: Callable[[Connection], object]) -> str:
    """The plan of the last statement `run` executes, as the backend explains it."""
    seen: list[tuple[str, Any]] = []  # the parameters as the driver takes them

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        run(conn)
        event.remove(conn, "before_cursor_execute", capture)
        statement, parameters = seen[-1]
        prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    return "\n".join(str(r[-1]) for r in rows)


def analyze(engine: Engine) -> None:
    with writer(engine.connect()) as conn, conn.begin():
        conn.exec_driver_sql("ANALYZE")


def test_the_chart_reads_only_its_window(engine):
    now = time.time_ns() // 1000
    old_start = now - 400 * DAY_US
    rows = [
        (i, f"s{i % 3}", old_start + i * 1000, "{}", "[]", "0" * 64, "none", "0" * 64)
        for i in range(1, OLD_EVENTS + 1)
    ]
    rows += [
        (OLD_EVENTS + i, "s0", now - i * MINUTE_US, "{}", "[]", "0" * 64, "none", "0" * 64)
        for i in range(1, RECENT_EVENTS + 1)
    ]
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    with writer(engine.connect()) as conn, conn.begin():
        conn.exec_driver_sql(
            "INSERT INTO events (position, source, received_at_us, query, headers, "
            f"body_sha256, verification, hash) VALUES ({', '.join([mark] * 8)})",
            rows,
        )
    analyze(engine)
    with engine.connect() as conn:
        _, counts = minute_counts(conn, now)
    assert sum(sum(c.values()) for c in counts.values()) == RECENT_EVENTS
    plan = plan_of(engine, lambda conn: minute_counts(conn, now))
    assert "ix_events_received_at_us" in plan, plan
    assert "source_position" not in plan, plan


ROWS = 20_000
CONFIG = {
    "key": "/id",
    "object": "/data",
    "columns": {"email": "/email", "n": {"path": "/n", "type": "integer"}},
}


@pytest.fixture
def big_projection(engine) -> Engine:
    """A live `people` projection of ROWS rows, written straight into its table."""
    projectors = projectors_for(people=CONFIG)
    drain(Worker(engine, projectors, owner="w"))
    with engine.connect() as conn:
        live, _ = versions.active(conn, "people")
        assert live is not None, "the people projection has no live version"
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    rows = [
        (f"{i:06}", f"p{i}@example.com", i % 97, "{}", None, i, i % 10 == 0)
        for i in range(1, ROWS + 1)
    ]
    with writer(engine.connect()) as conn, conn.begin():
        conn.exec_driver_sql(
            f"INSERT INTO {live.table_name} (id, email, n, data, version, position, deleted) "
            f"VALUES ({', '.join([mark] * 7)})",
            rows,
        )
    analyze(engine)
    return engine


@pytest.mark.parametrize(
    "filters,sort",
    [
        ({"email": "p77@example.com"}, ""),
        ({"n": "5"}, ""),
        ({}, "position"),
        ({}, "-position"),
        ({}, "email"),
        ({}, "-n"),
    ],
)
def test_filters_and_sorts_use_the_projection_indexes(big_projection, filters, sort):
    engine = big_projection

    def page(conn: Connection):
        return select_rows(conn, live_view(conn, "people"), filters, sort=sort, limit=50)

    with engine.connect() as conn:
        rows, _ = page(conn)
    assert rows and len(rows) <= 50
    if sort == "-position":
        assert rows[0]["position"] == ROWS - 1  # ROWS itself is a tombstone
    if filters:
        assert all(str(r[c]) == v for r in rows for c, v in filters.items())
    plan = plan_of(engine, page)
    if engine.dialect.name == "sqlite":
        assert "USING INDEX ix_p_people_v1_" in plan, plan
        if "email" not in filters:  # one row: SQLite may sort it rather than walk in order
            assert "TEMP B-TREE" not in plan, plan
    else:
        assert "Index Scan" in plan and "ix_p_people_v1_" in plan, plan
        assert "Sort" not in plan.replace("Sort Key", ""), plan
        assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize("after", [0, ROWS // 2, ROWS - 30])
def test_the_changes_feed_walks_the_position_index(big_projection, after):
    engine = big_projection

    def page(conn: Connection):
        return select_changes(conn, live_view(conn, "people"), after, 50)

    with engine.connect() as conn:
        rows = page(conn)
    expected = list(range(after + 1, min(after + 50, ROWS) + 1))
    assert [r["position"] for r in rows] == expected  # tombstones (every tenth) included
    assert any(r["deleted"] for r in rows)
    plan = plan_of(engine, page)
    if engine.dialect.name == "sqlite":
        assert "USING INDEX ix_p_people_v1_2" in plan, plan  # (position, id): the third index
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert "Index Scan" in plan and "ix_p_people_v1_2" in plan, plan
        assert "Sort" not in plan.replace("Sort Key", ""), plan
        assert "Seq Scan" not in plan, plan
