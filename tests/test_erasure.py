"""Retention without breaking the chain: bodies erased, digests and chain kept, all recorded."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from ledger.erase import Criteria, erase, plan
from ledger.integrity import verify_ledger
from ledger.recorder import get_event, iter_events
from ledger.recorder.schema import erasures
from ledger.transfer import export_lines, import_lines
from projections import versions
from projections.worker import Worker
from tests.helpers import append, new_event
from tests.projection_support import ENTITIES, drain, entity_body, projectors_for


def test_erase_keeps_digests_and_the_chain(engine):
    bodies = [b"a" * i for i in range(1, 9)]
    append(engine, [new_event(b, source="app" if i % 2 else "crm") for i, b in enumerate(bodies)])
    before = {r.position: r.hash for r in iter_events(engine)}
    criteria = Criteria(source="crm", stop=6)
    assert plan(engine, criteria).count == 3
    done = erase(engine, criteria, actor="ops", reason="retention")
    assert (done.count, done.first, done.last) == (3, 1, 5)
    rows = {r.position: r for r in iter_events(engine)}
    assert [p for p, r in rows.items() if r.body is None] == [1, 3, 5]
    for p, r in rows.items():
        assert r.hash == before[p]
        assert r.body_sha256 == hashlib.sha256(bodies[p - 1]).hexdigest()
    result = verify_ledger(engine)
    assert (result.ok, result.checked, result.erased) == (True, 8, 3)
    with engine.connect() as conn:
        record = conn.execute(select(erasures)).one()
    assert (record.actor, record.reason, record.erased) == ("ops", "retention", 3)
    assert orjson.loads(record.criteria)["source"] == "crm"
    # safe to repeat: nothing more to erase
    assert erase(engine, criteria, actor="ops").count == 0


def test_an_erasure_that_was_not_recorded_is_reported(engine):
    append(engine, [new_event(b"x"), new_event(b"y")])
    with engine.begin() as conn:
        conn.execute(text("UPDATE events SET body = NULL WHERE position = 2"))
    result = verify_ledger(engine)
    assert (result.ok, result.first_bad_position) == (False, 2)
    assert "without a recorded erasure" in result.reason


def test_only_erasing_is_allowed_not_rewriting(engine):
    append(engine, [new_event(b"x")])
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE events SET body = NULL, query = 'x=1' WHERE position = 1"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE events SET body = body WHERE position = 1"))
    with engine.connect() as conn:
        assert get_event(conn, 1).body == b"x"


def test_an_export_with_erased_bodies_imports_and_verifies(engine, tmp_path):
    from ledger import migrate
    from ledger.recorder import make_engine

    append(engine, [new_event(b"keep"), new_event(b"forget"), new_event(b"keep too")])
    append(engine, [new_event(b"a"), new_event(b"b")])
    erase(engine, Criteria(start=2, stop=2), actor="ops")
    erase(engine, Criteria(start=4, stop=4), actor="ops")
    lines = list(export_lines(engine))
    assert orjson.loads(lines[1])["body_base64"] is None
    target = make_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    migrate.upgrade(target)
    assert import_lines(target, lines) == 5
    assert [r.body for r in iter_events(target)] == [b"keep", None, b"keep too", None, b"b"]
    result = verify_ledger(target)
    assert (result.ok, result.checked, result.erased) == (True, 5, 2)
    with target.connect() as conn:
        recorded = conn.execute(select(erasures)).one()
    assert (recorded.actor, recorded.erased) == ("import", 2)
    assert (recorded.first_position, recorded.last_position) == (2, 4)
    target.dispose()


def test_a_projection_that_needs_an_erased_body_refuses_to_rebuild(engine):
    append(
        engine,
        [
            new_event(entity_body("data_updated", "c", str(i), 1), event_type="data_updated")
            for i in range(4)
        ],
    )
    projectors = projectors_for(entities=ENTITIES)
    drain(Worker(engine, projectors, owner="w"))
    erase(engine, Criteria(start=2, stop=2), actor="ops")
    with pytest.raises(versions.RebuildRefused, match="erased bodies"):
        versions.request_rebuild(engine, projectors["entities"])
    with engine.connect() as conn:
        live, building = versions.active(conn, "entities")
    assert building is None and live.version == 1  # the live version keeps serving


def test_erased_inputs_are_found_within_the_recorded_erasures(engine):
    """The check before a build searches only what recorded erasures cover: nothing for a
    log never erased, every erased body across separate erasures otherwise."""
    append(
        engine,
        [
            new_event(entity_body("data_updated", "c", str(i), 1), event_type="data_updated")
            for i in range(6)
        ],
    )
    projector = projectors_for(entities=ENTITIES)["entities"]
    with engine.connect() as conn:
        assert versions.erased_inputs(conn, projector) == (0, None, None)
    erase(engine, Criteria(start=2, stop=2), actor="ops")
    erase(engine, Criteria(start=5, stop=5), actor="ops")
    with engine.connect() as conn:
        assert versions.erased_inputs(conn, projector) == (2, 2, 5)


def test_erase_cli_needs_confirmation_and_criteria(tmp_path, db_url):
    config = tmp_path / "hookledger.toml"
    config.write_text(f'database_url = "{db_url}"\n')
    from ledger import migrate
    from ledger.recorder import make_engine

    engine = make_engine(db_url)
    migrate.upgrade(engine)
    append(engine, [new_event(b"old")])

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "erase", "--config", str(config), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    refused = run("--source", "app")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert run().returncode == 2  # no criteria at all
    done = run("--source", "app", "--yes", "--reason", "test")
    assert done.returncode == 0, done.stderr
    assert "erased 1 body (" in done.stdout
    with engine.connect() as conn:
        assert get_event(conn, 1).body is None
    engine.dispose()
