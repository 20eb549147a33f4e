"""The projection commands of the CLI (SPEC 2, 6) on both backends: status, rebuild, retry."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, text

from api.cli import main
from ledger.config import load_config
from projections import leases, versions
from projections.adapters import load_adapters
from projections.schema import projection_leases
from projections.worker import Worker
from tests.helpers import append, new_event
from tests.projection_support import actual_entities, drain, entity_body

ENTITIES = """
[projections.entities]
types = {types}
key = ["/entity", "/id"]
object = "{object}"
version = "/version"
delete_on = ["data_deleted"]
columns = {{ name = "/data/name" }}
"""

FIXED = ENTITIES.format(types='["data_updated", "data_deleted"]', object="/data")
BUGGY = ENTITIES.format(types='["data_updated"]', object="/entity")  # no deletes, wrong document

POISONED = """
[projections.poisoned]
class = "tests.projection_support:Poisoned"
on_error = "{on_error}"
"""

DIFF = re.compile(r"rows added (\d+), removed (\d+), changed (\d+)")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("HOOKLEDGER_DATABASE_URL", raising=False)
    monkeypatch.delenv("HOOKLEDGER_CONFIG", raising=False)


def config(tmp_path: Path, engine: Engine, body: str) -> str:
    path = tmp_path / "hookledger.toml"
    url = engine.url.render_as_string(hide_password=False)
    path.write_text(f'database_url = "{url}"\n{body}')
    return str(path)


def work(path: str, engine: Engine) -> None:
    """What a projector worker would do with this config, until idle."""
    projectors = load_adapters(load_config(path))
    drain(Worker(engine, projectors, owner="test"))
    for name in projectors:  # as a worker that stops does
        leases.release_lease(engine, name, "test")


@pytest.fixture
def setup(tmp_path, engine):
    """`setup(config_body)`: (re)write the config for this test's database; returns its path."""
    return lambda body: config(tmp_path, engine, body)


def entity_events(engine: Engine) -> None:
    """10 customers, 3 of them then deleted."""
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "customer", str(i), 1, name=f"c{i}"),
                event_id=f"u{i}",
                event_type="data_updated",
            )
            for i in range(10)
        ]
        + [
            new_event(
                entity_body("data_deleted", "customer", str(i), 2),
                event_id=f"d{i}",
                event_type="data_deleted",
            )
            for i in range(3)
        ],
    )


def version_states(engine: Engine, name: str) -> dict[int, tuple[str, str, int]]:
    with engine.connect() as conn:
        return {r.version: (r.status, r.state, r.position) for r in versions.of(conn, name)}


def one_line(stream: str) -> str:
    lines = stream.strip().splitlines()
    assert len(lines) == 1, stream
    return lines[0]


# --- status ---------------------------------------------------------------------------------


def test_status_prints_a_row_per_projection_and_exits_1_on_a_failure(setup, engine, capsys):
    path = setup(FIXED + POISONED.format(on_error="halt"))
    entity_events(engine)
    work(path, engine)
    assert main(["status", "--config", path]) == 0
    shown = capsys.readouterr().out
    assert "entities" in shown and "poisoned" in shown
    assert "failed" not in shown
    row = next(line for line in shown.splitlines() if "entities" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    # name, version, state, position, head, lag, rows
    assert cells[:7] == ["entities", "1", "live", "13", "13", "0", "7"], shown

    append(engine, [new_event(b"poison"), new_event(b'{"after": 1}')])
    work(path, engine)
    assert main(["status", "--config", path]) == 1
    shown = capsys.readouterr().out
    poisoned = next(line for line in shown.splitlines() if "poisoned" in line)
    cells = [c.strip() for c in poisoned.strip("│ ").split("│")]
    assert cells[:7] == ["poisoned", "1", "failed", "13", "15", "2", "13"], shown
    assert "@14:" in poisoned  # the last error names the poisoned position
    entities = next(line for line in shown.splitlines() if "entities" in line)
    assert "live" in entities


# --- rebuild --------------------------------------------------------------------------------


def test_rebuild_works_the_rebuild_itself_and_swaps_in_version_2(setup, engine, capsys):
    path = setup(FIXED)
    entity_events(engine)
    work(path, engine)
    with engine.connect() as conn:
        before = actual_entities(conn)
    capsys.readouterr()

    assert main(["rebuild", "entities", "--config", path]) == 0
    captured = capsys.readouterr()
    assert "rebuild to version 2 started" in captured.err
    line = one_line(captured.out)
    assert line.startswith("entities: version 2 is live")
    assert DIFF.search(line).groups() == ("0", "0", "0")
    assert version_states(engine, "entities") == {
        2: ("live", "running", 13),
        1: ("retired", "running", 13),
    }
    with engine.connect() as conn:
        assert actual_entities(conn) == before
        assert conn.execute(projection_leases.select()).all() == []  # the lease is released
        assert orjson.loads(versions.active(conn, "entities")[0].diff) == {
            "added": 0,
            "removed": 0,
            "changed": 0,
        }


def test_rebuild_after_a_fix_reports_what_changed(setup, engine, capsys):
    path = setup(BUGGY)
    entity_events(engine)
    append(
        engine,
        [
            new_event(
                entity_body("data_updated", "order", "9", 1, name="o"),
                event_id="o9",
                event_type="data_updated",
            )
        ],
    )
    work(path, engine)  # v1: the deletes were ignored and `data` holds the wrong document
    path = setup(FIXED)
    assert main(["rebuild", "entities", "--config", path]) == 0
    line = one_line(capsys.readouterr().out)
    # 3 customers deleted, the other 7 and the order got their real document
    assert DIFF.search(line).groups() == ("0", "3", "8")
    assert version_states(engine, "entities")[2][0] == "live"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, deleted, data FROM entities ORDER BY id")).all()
    assert sum(1 for r in rows if r.deleted) == 3


def test_rebuild_no_wait_returns_at_once_and_leaves_a_build(setup, engine, capsys):
    path = setup(FIXED)
    entity_events(engine)
    work(path, engine)
    capsys.readouterr()

    started = time.monotonic()
    assert main(["rebuild", "entities", "--no-wait", "--config", path]) == 0
    assert time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert "rebuild to version 2 started" in one_line(captured.err)
    assert captured.out == ""
    assert version_states(engine, "entities") == {
        2: ("building", "running", 0),
        1: ("live", "running", 13),
    }
    with engine.connect() as conn:
        assert conn.execute(projection_leases.select()).all() == []
        assert len(actual_entities(conn)) == 10  # reads still come from version 1

    # asking again joins the build that runs instead of starting a third version
    assert main(["rebuild", "entities", "--config", path]) == 0
    captured = capsys.readouterr()
    assert "version 2 already running" in captured.err
    assert one_line(captured.out).startswith("entities: version 2 is live")
    assert set(version_states(engine, "entities")) == {1, 2}


# --- projections retry ------------------------------------------------------------------------


def test_projections_retry_resumes_a_failed_projection(setup, engine, capsys):
    path = setup(POISONED.format(on_error="halt"))
    append(engine, [new_event(b'{"ok": 1}')])
    work(path, engine)
    append(engine, [new_event(b"poison"), new_event(b'{"ok": 2}')])
    work(path, engine)
    assert version_states(engine, "poisoned") == {1: ("live", "failed", 1)}
    assert main(["status", "--config", path]) == 1
    capsys.readouterr()

    # the operator decides to skip the poison, then resumes
    path = setup(POISONED.format(on_error="skip"))
    assert main(["projections", "retry", "poisoned", "--config", path]) == 0
    assert "resumed" in one_line(capsys.readouterr().out)
    assert version_states(engine, "poisoned") == {1: ("live", "running", 1)}

    work(path, engine)
    assert main(["status", "--config", path]) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT position FROM poisoned ORDER BY 1")).scalars().all() == [
            1,
            3,
        ]
    capsys.readouterr()
    assert main(["projections", "retry", "poisoned", "--config", path]) == 0
    assert "nothing to retry" in one_line(capsys.readouterr().out)


# --- unknown names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["rebuild", "nope"],
        ["rebuild", "nope", "--no-wait"],
        ["projections", "retry", "nope"],
        ["project", "--only", "nope"],
    ],
)
def test_an_unknown_projection_is_one_line_and_exit_2(setup, engine, capsys, argv):
    path = setup(FIXED)
    assert main([*argv, "--config", path]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert "nope" in line
    assert "Traceback" not in captured.err + captured.out
    with engine.connect() as conn:
        assert versions.of(conn) == []
