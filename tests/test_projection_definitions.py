"""Projection definitions: mistakes fail at load; pointers, Python modules, names, fingerprints."""

# Each mistake is one line naming the file and the key, exit 2. A module next to the config
# file imports without PYTHONPATH, and its code is part of the version's fingerprint, so
# `status` can tell when the workers run older code than the file.

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from ledger.config import load_config
from ledger.errors import ConfigError
from ledger.pointer import resolve
from projections import versions
from projections.adapters import load_adapters
from projections.declarative import Definition
from projections.status import status
from projections.worker import Worker
from tests.helpers import append, new_event
from tests.projection_support import drain

ROOT = Path(__file__).resolve().parent.parent

SOURCE = """
[sources.app]
verifier = "none"
event_id = "/id"
"""

PROJECTION = """
[projections.things]
source = "app"
key = "/id"
object = "/data"
"""

# (where the bad pointer goes, the key the error must name)
BAD_POINTERS = [
    (SOURCE.replace('"/id"', '"/a/~2"') + PROJECTION, "sources.app.event_id"),
    (SOURCE + 'event_type = "/t~"\n' + PROJECTION, "sources.app.event_type"),
    (SOURCE + PROJECTION.replace('key = "/id"', 'key = "/a/~2"'), "projections.things.key"),
    (SOURCE + PROJECTION.replace('key = "/id"', 'key = ["/id", "/b~x"]'), "projections.things.key"),
    (SOURCE + PROJECTION.replace('"/data"', '"/da~ta"'), "projections.things.object"),
    (SOURCE + PROJECTION + 'version = "/v~2"\n', "projections.things.version"),
    (SOURCE + PROJECTION + 'columns = { m = "/m~" }\n', "projections.things.columns.m"),
    (
        SOURCE + PROJECTION + 'columns = { m = { path = "/~3m", type = "integer" } }\n',
        "projections.things.columns.m.path",
    ),
]


def load(tmp_path: Path, toml: str):
    path = tmp_path / "hookledger.toml"
    path.write_text(toml)
    return load_adapters(load_config(str(path), {}))


def hookledger(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a process whose import path is hookledger's root only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize(("toml", "key"), BAD_POINTERS)
def test_a_pointer_with_an_invalid_escape_is_a_config_error(tmp_path, toml, key):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'hookledger.toml'}: {key}: "), message
    assert "escape" in message


def test_valid_escapes_still_load_and_resolve(tmp_path):
    toml = SOURCE + PROJECTION.replace('"/data"', '"/a~1b/c~0d"')
    definition = load(tmp_path, toml)["things"].definition
    assert resolve({"a/b": {"c~d": 1}}, definition.object) == 1


def test_cli_reports_a_bad_pointer_in_one_line_with_exit_2(tmp_path):
    (tmp_path / "hookledger.toml").write_text(BAD_POINTERS[0][0])
    result = hookledger("status", "--config", "hookledger.toml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "hookledger.toml: sources.app.event_id" in lines[0]


def test_a_projection_over_an_unconfigured_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"projections\.things\.source: no source named 'ap'"):
        load(tmp_path, SOURCE + PROJECTION.replace('source = "app"', 'source = "ap"'))
    module = write_module(tmp_path, 'source = "nope"\n    types = ["a"]')
    with pytest.raises(ConfigError, match=r"projections\.counts\.class: no source named 'nope'"):
        load(tmp_path, SOURCE + python_projection(module))
    # without a source, a projection reads every source: nothing to check
    assert load(tmp_path, SOURCE + PROJECTION.replace('source = "app"\n', ""))


# --- Python projections ---------------------------------------------------------------------

MODULE = """
from sqlalchemy import Column, Integer, Text
from projections.python import Projection


class Counts(Projection):
    version = 1
    {attributes}

    def table(self, metadata, name):
        from sqlalchemy import Table
        return Table(name, metadata, {columns})

    def apply(self, conn, table, events):
        for e in events:
            row = conn.execute(
                table.select().where(table.c.event_type == e.event_type)
            ).first()
            if row is None:
                conn.execute(table.insert().values(event_type=e.event_type, count={step}))
            else:
                conn.execute(
                    table.update()
                    .where(table.c.event_type == e.event_type)
                    .values(count=row.count + {step})
                )
"""

COLUMNS = 'Column("event_type", Text, primary_key=True), Column("count", Integer)'


def write_module(
    folder: Path, attributes: str = "types = None", columns: str = COLUMNS, step: int = 1
) -> str:
    """A projection module beside the config file, under a name no other test imports."""
    name = f"counts_{uuid.uuid4().hex[:12]}"
    source = MODULE.format(attributes=attributes, columns=columns, step=step)
    (folder / f"{name}.py").write_text(source)
    return name


def python_projection(module: str) -> str:
    return f'\n[projections.counts]\nclass = "{module}:Counts"\n'


def test_python_types_given_as_a_string_is_a_config_error(tmp_path):
    module = write_module(tmp_path, 'types = "data_updated"')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, SOURCE + python_projection(module))
    message = str(caught.value)
    assert "hookledger.toml: projections.counts.class" in message
    assert "types must be a list" in message and "'data_updated'" in message


def test_python_table_without_a_primary_key_is_a_config_error(tmp_path):
    module = write_module(tmp_path, columns='Column("event_type", Text), Column("count", Integer)')
    with pytest.raises(ConfigError, match=r"projections\.counts\.class: .*no primary key"):
        load(tmp_path, SOURCE + python_projection(module))


def test_a_module_beside_the_config_file_imports_without_pythonpath(tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    module = write_module(tmp_path)
    config = tmp_path / "hookledger.toml"
    db = tmp_path / "ledger.db"
    config.write_text(f'database_url = "sqlite:///{db}"\n' + SOURCE + python_projection(module))
    migrated = hookledger("migrate", "--config", str(config), cwd=elsewhere)
    assert migrated.returncode == 0, migrated.stderr
    result = hookledger("status", "--config", str(config), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "counts" in result.stdout


def test_a_code_change_builds_a_new_version_and_status_says_the_workers_are_older(tmp_path, engine):
    module = write_module(tmp_path, step=1)
    config = tmp_path / "hookledger.toml"
    config.write_text(SOURCE + python_projection(module))
    append(engine, [new_event(b"{}", event_id=f"e{i}", event_type="t") for i in range(3)])

    running = load_adapters(load_config(str(config), {}))
    drain(Worker(engine, running, owner="w"))
    [entry] = status(engine, running)
    assert (entry["version"], entry["outdated"]) == (1, False)

    # the code changes on disk; the running worker still has the old one
    (tmp_path / f"{module}.py").write_text(
        MODULE.format(attributes="types = None", columns=COLUMNS, step=10)
    )
    now = load_adapters(load_config(str(config), {}))  # what `hookledger status` loads
    assert now["counts"].fingerprint != running["counts"].fingerprint
    [entry] = status(engine, now)
    assert (entry["version"], entry["outdated"]) == (1, True)
    [entry] = status(engine, running)  # a long-running server sees the file too
    assert entry["outdated"] is True

    # the workers restart: a new version is built from the new code and swapped in
    importlib_reload(module)
    restarted = load_adapters(load_config(str(config), {}))
    drain(Worker(engine, restarted, owner="w"))  # the same holder: its lease is still valid
    [entry] = status(engine, restarted)
    assert (entry["version"], entry["state"], entry["outdated"]) == (2, "live", False)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count FROM counts")).scalar() == 30
        [live] = [r for r in versions.of(conn, "counts") if r.status == "live"]
    assert live.fingerprint == restarted["counts"].fingerprint


def importlib_reload(module: str) -> None:
    """A restarted worker is a new process: forget the module this one imported."""
    sys.modules.pop(module, None)


def test_status_cli_says_when_the_workers_run_older_code(tmp_path):
    module = write_module(tmp_path)
    config = tmp_path / "hookledger.toml"
    db = tmp_path / "ledger.db"
    config.write_text(f'database_url = "sqlite:///{db}"\n' + SOURCE + python_projection(module))
    assert hookledger("migrate", "--config", str(config), cwd=tmp_path).returncode == 0
    from ledger.recorder import make_engine

    engine = make_engine(f"sqlite:///{db}")
    try:
        drain(Worker(engine, load_adapters(load_config(str(config), {})), owner="w"))
    finally:
        engine.dispose()
    fresh = hookledger("status", "--config", str(config), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert "older definition" not in fresh.stderr
    path = tmp_path / f"{module}.py"
    path.write_text(path.read_text() + "\n# fixed a bug\n")
    stale = hookledger("status", "--config", str(config), cwd=tmp_path)
    assert stale.returncode == 0, stale.stderr
    assert "counts: the workers run an older definition than the one on disk" in stale.stderr


def test_shop_domain_is_a_shopify_key(tmp_path):
    path = tmp_path / "hookledger.toml"
    path.write_text('[sources.gh]\nverifier = "github"\nsecret_env = "S"\nshop_domain = "x"\n')
    with pytest.raises(ConfigError, match=r"sources\.gh\.shop_domain: applies to verifier"):
        load_config(str(path), {})
    path.write_text('[sources.sh]\nverifier = "shopify"\nsecret_env = "S"\nshop_domain = "a.b"\n')
    assert load_config(str(path), {}).sources["sh"].send_options == {"shop_domain": "a.b"}


# --- declarative definitions: errors name the key, names, fingerprints ----------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ({}, "key: is required"),
        ({"key": "id"}, "JSON Pointer"),
        ({"key": ["/a/id", "/b/id"]}, "clashes"),
        ({"key": "/id", "columns": {"id": "/x"}}, "clashes"),
        ({"key": "/id", "columns": {"data": "/x"}}, "clashes"),
        ({"key": "/id", "columns": {"n": {"path": "/n", "type": "float"}}}, "type"),
        ({"key": "/id", "on_error": "ignore"}, "on_error"),
        ({"key": "/id", "colums": {}}, "unknown key"),
    ],
)
def test_definition_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message) as info:
        Definition.parse("p", raw, "hookledger.toml")
    assert str(info.value).startswith("hookledger.toml: projections.p.")


def test_fingerprint_follows_meaning_not_error_policy():
    a = Definition.parse("p", {"key": "/id"}, "t")
    b = Definition.parse("p", {"key": "/id", "on_error": "skip"}, "t")
    c = Definition.parse("p", {"key": "/id", "object": "/data"}, "t")
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("name", ["nothing", "order", "user", "select"])
def test_a_projection_named_like_an_sql_keyword_is_refused(name):
    """The name is also a SQL view: a keyword would break its every statement."""
    from ledger.config import Config
    from projections.adapters import load_adapters

    with pytest.raises(ConfigError, match="SQL keyword"):
        load_adapters(Config(path="hookledger.toml", projections={name: {"key": "/id"}}))
    assert load_adapters(Config(path="t", projections={"orders": {"key": "/id"}}))


def test_a_projection_name_too_long_for_postgresql_is_refused():
    """PostgreSQL cuts identifiers at 63 bytes: the tables of two versions of a long
    name would be one table."""
    from ledger.config import Config
    from projections.adapters import MAX_NAME, load_adapters

    with pytest.raises(ConfigError, match="at most"):
        load_adapters(Config(path="t", projections={"a" * (MAX_NAME + 1): {"key": "/id"}}))
    assert load_adapters(Config(path="t", projections={"a" * MAX_NAME: {"key": "/id"}}))
    assert len(f"stage_p_{'a' * MAX_NAME}_v999999") <= 63
