"""The `hookledger` command line (SPEC 2): config errors, migrate, verify, export/import,
events, and serve's refusal to open an unauthenticated API to the network."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, select, text

from api.cli import main
from ledger import migrate
from ledger.chain import canonical_headers
from ledger.recorder import NewEvent, append_batch, make_engine, writer
from ledger.recorder.schema import events, ledger_head
from tests.pg import free_port

ROOT = Path(__file__).resolve().parent.parent

BINARY_BODY = b"\x00\x01\xfe\xff binary \x80\x81\r\n\x1a"


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    """`python -m api.cli ARGS` in a clean environment (no inherited HOOKLEDGER_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=str(cwd),
        env={**base, **(env or {})},
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def one_line(stream: str) -> str:
    lines = stream.strip().splitlines()
    assert len(lines) == 1, stream
    return lines[0]


def write_config(path: Path, url: str, extra: str = "") -> str:
    path.write_text(f'database_url = "{url}"\n{extra}')
    return str(path)


def other_url(db_url: str, tmp_path: Path, request, name: str = "other") -> str:
    """A second fresh database on the same backend as `db_url`."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / (name + '.db')}"
    return request.getfixturevalue("postgres").create_database()


def sample_events() -> list[NewEvent]:
    bodies = [
        (b'{"id":"evt_1","type":"customer.created"}', "s", "evt_1", "customer.created"),
        (BINARY_BODY, "t", None, None),
        (b'{"id":"evt_2","type":"customer.updated"}', "s", "evt_2", "customer.updated"),
        (b"", "t", "e-empty", "ping"),
        (b'{"id":"evt_1","type":"customer.created"}', "s", "evt_1", "customer.created"),
        ("caf\u00e9 \u2603".encode(), "s", "evt_3", "note"),
    ]
    out = []
    for i, (body, source, event_id, event_type) in enumerate(bodies):
        headers = canonical_headers(
            [(b"content-type", b"application/json"), (b"x-n", str(i).encode())]
        )
        out.append(
            NewEvent(
                source=source,
                received_at_us=1_700_000_000_000_000 + i * 1_000_000,
                event_id=event_id,
                event_type=event_type,
                query=f"n={i}" if i % 2 else "",
                headers=headers,
                body=body,
                body_sha256=hashlib.sha256(body).hexdigest(),
                content_type="application/octet-stream" if source == "t" else "application/json",
                remote_addr="127.0.0.1",
                verification="verified",
                secret_index=0,
            )
        )
    return out


def populate(url: str) -> list[NewEvent]:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        batch = sample_events()
        with writer(engine.connect()) as conn, conn.begin():
            append_batch(conn, batch[:3])
        with writer(engine.connect()) as conn, conn.begin():
            append_batch(conn, batch[3:])
        return batch
    finally:
        engine.dispose()


def snapshot(url: str) -> tuple[list[tuple], tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(select(events).order_by(events.c.position))]
            # The head itself; `digests_through` is how far body_firsts has merged, which
            # `import` brings to the head at once and appends in chunks.
            head = tuple(conn.execute(select(ledger_head.c.position, ledger_head.c.hash)).one())
        return rows, head
    finally:
        engine.dispose()


def tamper(url: str, statement: str) -> None:
    """What an attacker with database access does: get past the triggers, then UPDATE."""
    engine: Engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER events_no_update")
            else:
                conn.exec_driver_sql("SET session_replication_role = replica")
            conn.execute(text(statement))
    finally:
        engine.dispose()


# --- configuration errors -------------------------------------------------------

BAD_CONFIGS = [
    ("unknown-top-key", 'databse_url = "sqlite:///x.db"\n', "databse_url"),
    (
        "unknown-source-key",
        '[sources.app]\nverifier = "none"\nsecrett_env = "X"\n',
        "sources.app.secrett_env",
    ),
    ("wrong-type", '[server]\nmax_body_bytes = "big"\n', "server.max_body_bytes"),
    ("wrong-type-list", '[server]\nredact_headers = "cookie"\n', "server.redact_headers"),
    ("unknown-verifier", '[sources.app]\nverifier = "md5"\n', "sources.app.verifier"),
    (
        "missing-secret-env",
        '[sources.app]\nverifier = "hmac-sha256"\nsignature_header = "X-Sig"\n',
        "sources.app.secret_env",
    ),
    ("bad-scope", '[[tokens]]\ntoken_env = "T"\nscopes = ["write"]\n', "tokens[0].scopes"),
    ("markup-in-value", 'database_url = "mysql://[/x]@[bold]h"\n', "database_url"),
    ("invalid-toml", "[server\nmax_body_bytes = 1\n", None),
    ("zero-body-timeout", "[server]\nbody_timeout_seconds = 0\n", "server.body_timeout_seconds"),
    (
        "text-body-timeout",
        '[server]\nbody_timeout_seconds = "30s"\n',
        "server.body_timeout_seconds",
    ),
    ("bool-body-timeout", "[server]\nbody_timeout_seconds = true\n", "server.body_timeout_seconds"),
    (
        "negative-rejections-bound",
        "[server]\nrejections_max_bytes = -1\n",
        "server.rejections_max_bytes",
    ),
    (
        "float-rejections-bound",
        "[server]\nrejections_max_bytes = 1.5\n",
        "server.rejections_max_bytes",
    ),
]


@pytest.mark.parametrize(("case", "content", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_and_exit_2(tmp_path, case, content, key):
    path = tmp_path / f"{case}.toml"
    path.write_text(content)
    command = "migrate" if len(case) % 2 else "verify"
    result = run_cli(command, "--config", str(path), cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    line = one_line(stderr)
    assert str(path) in line
    if key is not None:
        assert key in line
    assert result.stdout == b""
    assert not (tmp_path / "x.db").exists()


def test_missing_and_unreadable_config_files(tmp_path):
    missing = tmp_path / "nope.toml"
    result = run_cli("migrate", "--config", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    assert str(missing) in one_line(result.stderr.decode())

    # HOOKLEDGER_CONFIG names the file when --config is absent
    result = run_cli("verify", cwd=tmp_path, env={"HOOKLEDGER_CONFIG": str(missing)})
    assert result.returncode == 2
    assert str(missing) in one_line(result.stderr.decode())

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'database_url = "sqlite:///caf\xe9.db"\n')
    result = run_cli("migrate", "--config", str(latin1), cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert str(latin1) in one_line(stderr)

    result = run_cli("migrate", "--config", str(tmp_path), cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert str(tmp_path) in one_line(stderr)


def test_bad_config_in_process(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[sources.app]\nverifier = "none"\ntolerance_seconds = "5"\n')
    assert main(["migrate", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert str(path) in line and "sources.app.tolerance_seconds" in line
    assert captured.out == ""


# --- migrate and verify -----------------------------------------------------------


def test_migrate_is_safe_to_repeat(tmp_path, db_url, capsys):
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    assert main(["migrate", "--config", cfg]) == 0
    first = capsys.readouterr().out
    assert "migrated" in first
    assert main(["migrate", "--config", cfg]) == 0
    assert "already at head" in capsys.readouterr().out
    engine = make_engine(db_url)
    try:
        assert migrate.is_current(engine)
    finally:
        engine.dispose()
    populate(db_url)
    assert main(["migrate", "--config", cfg]) == 0
    assert snapshot(db_url)[1][0] == len(sample_events())
    assert main(["verify", "--config", cfg]) == 0


def test_migrate_says_one_line_and_nothing_on_stderr(tmp_path):
    """Alembic's own INFO lines ("Context impl SQLiteImpl.") are not printed."""
    cfg = write_config(tmp_path / "hookledger.toml", f"sqlite:///{tmp_path / 'h.db'}")
    result = run_cli("migrate", "--config", cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        f"migrated empty database -> {migrate.head_revision()}"
    ]
    assert result.stderr.decode() == ""


def test_verify_intact_then_tampered(tmp_path, db_url, capsys):
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    made = populate(db_url)
    capsys.readouterr()
    assert main(["verify", "--config", cfg]) == 0
    captured = capsys.readouterr()
    assert f"{len(made)} events checked" in captured.out
    assert captured.err.strip() == ""

    tamper(db_url, "UPDATE events SET event_type = 'forged' WHERE position = 4")
    assert main(["verify", "--config", cfg]) == 1
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert "position 4" in line
    assert "position 3" not in line
    # verifying from after the change trusts the stored hash before it
    assert main(["verify", "--config", cfg, "--from", "5"]) == 0
    capsys.readouterr()
    assert main(["verify", "--config", cfg, "--from", "2"]) == 1
    assert "position 4" in one_line(capsys.readouterr().err)


def test_verify_catches_a_changed_body(tmp_path, db_url, capsys):
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    populate(db_url)
    body_literal = "X'7b7d'" if db_url.startswith("sqlite") else "'\\x7b7d'::bytea"
    tamper(db_url, f"UPDATE events SET body = {body_literal} WHERE position = 3")
    capsys.readouterr()
    assert main(["verify", "--config", cfg]) == 1
    line = one_line(capsys.readouterr().err)
    assert "position 3" in line


def test_verify_as_a_process_exit_codes(tmp_path, db_url):
    populate(db_url)
    env = {"HOOKLEDGER_DATABASE_URL": db_url}
    ok = run_cli("verify", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    tamper(db_url, "UPDATE events SET query = 'n=99' WHERE position = 2")
    bad = run_cli("verify", cwd=tmp_path, env=env)
    assert bad.returncode == 1
    stderr = bad.stderr.decode()
    assert "Traceback" not in stderr
    assert "position 2" in one_line(stderr)


def test_verify_counts_the_intact_events_before_a_break(tmp_path, db_url, capsys):
    """A break at a known position: the events before it that were checked, from 1 or
    from --from, whichever rule found it (the chain, or an erasure nobody recorded)."""
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    populate(db_url)
    tamper(db_url, "UPDATE events SET event_type = 'forged' WHERE position = 4")
    capsys.readouterr()
    cases = [([], "3 events before it are intact"), (["--from", "2"], "positions 2 to 3")]
    for extra, expected in cases:
        assert main(["verify", "--config", cfg, *extra]) == 1
        line = one_line(capsys.readouterr().err)
        assert "chain broken at position 4" in line and expected in line, line
    assert main(["verify", "--config", cfg, "--from", "4"]) == 1
    assert "(no events before it were checked)" in one_line(capsys.readouterr().err)


def test_verify_counts_before_an_unrecorded_erasure(tmp_path, db_url, capsys):
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    populate(db_url)
    engine = make_engine(db_url)
    try:  # the append-only guard lets a body be erased; only `erase` records it
        with engine.begin() as conn:
            conn.execute(text("UPDATE events SET body = NULL WHERE position = 3"))
    finally:
        engine.dispose()
    capsys.readouterr()
    assert main(["verify", "--config", cfg]) == 1
    line = one_line(capsys.readouterr().err)
    assert "position 3" in line and "2 events before it are intact" in line, line
    assert main(["verify", "--config", cfg, "--from", "2"]) == 1
    assert "(1 event before it is intact: position 2)" in one_line(capsys.readouterr().err)


def test_verify_from_past_the_head_is_a_clear_answer(tmp_path, db_url):
    made = populate(db_url)
    env = {"HOOKLEDGER_DATABASE_URL": db_url}
    up_to_date = run_cli("verify", "--from", str(len(made) + 1), cwd=tmp_path, env=env)
    assert up_to_date.returncode == 0, up_to_date.stderr
    assert "nothing to check" in up_to_date.stdout.decode()
    assert "broken" not in up_to_date.stdout.decode() + up_to_date.stderr.decode()
    past = run_cli("verify", "--from", str(len(made) + 5), cwd=tmp_path, env=env)
    assert past.returncode == 2
    line = one_line(past.stderr.decode())
    assert f"past the head (position {len(made)})" in line and "broken" not in line, line


def test_export_into_a_missing_folder_is_one_line(tmp_path, db_url):
    populate(db_url)
    target = tmp_path / "no" / "such" / "folder" / "export.jsonl"
    done = run_cli(
        "export", "-o", str(target), cwd=tmp_path, env={"HOOKLEDGER_DATABASE_URL": db_url}
    )
    assert done.returncode == 1
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr
    line = one_line(stderr)
    assert str(target.parent) in line and "No such file or directory" in line, line
    assert not target.parent.exists()


# --- export and import --------------------------------------------------------------


def test_export_then_import_reproduces_rows_and_chain(tmp_path, db_url, request, capsysbinary):
    made = populate(db_url)
    cfg = write_config(tmp_path / "src.toml", db_url)
    out = tmp_path / "export.jsonl"
    assert main(["export", "--config", cfg, "-o", str(out)]) == 0
    capsysbinary.readouterr()
    lines = out.read_bytes().splitlines()
    assert len(lines) == len(made)
    for position, (line, ev) in enumerate(zip(lines, made, strict=True), start=1):
        doc = orjson.loads(line)
        assert doc["position"] == position
        assert "body" not in doc
        assert base64.b64decode(doc["body_base64"]) == ev.body
        assert doc["headers"] == ev.headers
        assert doc["received_at"].endswith("Z") and len(doc["received_at"]) == 27
        for key in ("source", "event_id", "event_type", "query", "body_sha256", "hash"):
            assert key in doc

    # the same bytes on standard output
    assert main(["export", "--config", cfg]) == 0
    assert capsysbinary.readouterr().out == out.read_bytes()
    # a range
    assert main(["export", "--config", cfg, "--from", "2", "--to", "3"]) == 0
    ranged = capsysbinary.readouterr().out.splitlines()
    assert [orjson.loads(x)["position"] for x in ranged] == [2, 3]

    target = other_url(db_url, tmp_path, request)
    target_cfg = write_config(tmp_path / "dst.toml", target)
    assert main(["migrate", "--config", target_cfg]) == 0
    assert main(["import", "--config", target_cfg, str(out)]) == 0
    assert f"imported {len(made)} events".encode() in capsysbinary.readouterr().out
    assert snapshot(target) == snapshot(db_url)
    assert main(["verify", "--config", target_cfg]) == 0
    capsysbinary.readouterr()
    # and the target exports the very same file
    assert main(["export", "--config", target_cfg]) == 0
    assert capsysbinary.readouterr().out == out.read_bytes()


def test_import_refuses_a_non_empty_ledger(tmp_path, db_url, capsys):
    populate(db_url)
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    out = tmp_path / "export.jsonl"
    assert main(["export", "--config", cfg, "-o", str(out)]) == 0
    before = snapshot(db_url)
    capsys.readouterr()
    assert main(["import", "--config", cfg, str(out)]) == 1
    line = one_line(capsys.readouterr().err)
    assert "not empty" in line
    assert snapshot(db_url) == before


def _alter(lines: list[bytes], index: int, **changes) -> bytes:
    doc = orjson.loads(lines[index])
    doc.update(changes)
    copy = list(lines)
    copy[index] = orjson.dumps(doc)
    return b"\n".join(copy) + b"\n"


def test_import_refuses_an_altered_export_and_imports_nothing(tmp_path, db_url, request, capsys):
    populate(db_url)
    cfg = write_config(tmp_path / "src.toml", db_url)
    good = tmp_path / "export.jsonl"
    assert main(["export", "--config", cfg, "-o", str(good)]) == 0
    lines = good.read_bytes().splitlines()

    target = other_url(db_url, tmp_path, request)
    target_cfg = write_config(tmp_path / "dst.toml", target)
    assert main(["migrate", "--config", target_cfg]) == 0
    capsys.readouterr()
    variants = {
        "type": (_alter(lines, 3, event_type="forged"), 4),
        "body": (_alter(lines, 4, body_base64=base64.b64encode(b"{}").decode()), 5),
        "headers": (_alter(lines, 2, headers='[["x-n","9"]]'), 3),
        "reordered": (b"\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + b"\n", 2),
        "not-json": (b"\n".join([*lines[:5], b"{not json"]) + b"\n", 6),
    }
    for name, (content, line_number) in variants.items():
        path = tmp_path / f"altered-{name}.jsonl"
        path.write_bytes(content)
        assert main(["import", "--config", target_cfg, str(path)]) == 1, name
        captured = capsys.readouterr()
        line = one_line(captured.err)
        assert f"line {line_number}" in line, (name, line)
        assert "imported" not in captured.out
        rows, head = snapshot(target)
        assert rows == [], name
        assert head == (0, "0" * 64), name
    # the untouched export still goes in
    assert main(["import", "--config", target_cfg, str(good)]) == 0
    assert snapshot(target) == snapshot(db_url)


# --- events ---------------------------------------------------------------------------


def test_events_list_and_show(tmp_path, db_url, capsys):
    made = populate(db_url)
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    capsys.readouterr()
    assert main(["events", "--config", cfg]) == 0
    listing = capsys.readouterr().out
    for ev in made:
        if ev.event_id:
            assert ev.event_id in listing

    assert main(["events", "--config", cfg, "--source", "t"]) == 0
    only_t = capsys.readouterr().out
    assert "e-empty" in only_t
    assert "evt_1" not in only_t and "evt_2" not in only_t

    assert main(["events", "--config", cfg, "--type", "customer.updated"]) == 0
    only_updated = capsys.readouterr().out
    assert "evt_2" in only_updated and "evt_1" not in only_updated

    assert main(["events", "--config", cfg, "--limit", "1"]) == 0
    first_only = capsys.readouterr().out
    assert "evt_1" in first_only and "evt_2" not in first_only

    since = "2023-11-14T22:13:23Z"  # the fourth event's second (1_700_000_003 s)
    assert main(["events", "--config", cfg, "--since", since]) == 0
    recent = capsys.readouterr().out
    assert "e-empty" in recent and "evt_3" in recent and "evt_2" not in recent

    assert main(["events", "--config", cfg, "--source", "nobody"]) == 0
    assert "no events match" in capsys.readouterr().err

    assert main(["events", "--config", cfg, "--since", "last tuesday"]) == 2
    assert "--since" in one_line(capsys.readouterr().err)

    for limit in ("-1", "0", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["events", "--config", cfg, "--limit", limit])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert "--limit" in captured.err and "Traceback" not in captured.err
        assert captured.out == ""

    assert main(["events", "--config", cfg, "--since", "2023-13-01"]) == 2
    assert "--since" in one_line(capsys.readouterr().err)

    assert main(["events", "show", "3", "--config", cfg]) == 0
    shown = capsys.readouterr().out
    assert "evt_2" in shown and "customer.updated" in shown
    assert "x-n: 2" in shown
    assert hashlib.sha256(made[2].body).hexdigest() in shown

    assert main(["events", "--config", cfg, "show", "99"]) == 1
    assert "99" in one_line(capsys.readouterr().err)


def test_events_show_raw_is_byte_exact(tmp_path, db_url, capsysbinary):
    made = populate(db_url)
    cfg = write_config(tmp_path / "hookledger.toml", db_url)
    for position, ev in enumerate(made, start=1):
        capsysbinary.readouterr()
        assert main(["events", "show", str(position), "--raw", "--config", cfg]) == 0
        assert capsysbinary.readouterr().out == ev.body


def test_events_show_raw_as_a_process(tmp_path, db_url):
    populate(db_url)
    result = run_cli(
        "events", "show", "2", "--raw", cwd=tmp_path, env={"HOOKLEDGER_DATABASE_URL": db_url}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == BINARY_BODY


# --- serve ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_serve_refuses_a_public_address_without_tokens(tmp_path, host):
    db = tmp_path / "serve.db"
    cfg = write_config(tmp_path / "hookledger.toml", f"sqlite:///{db}")
    result = run_cli(
        "serve",
        "--config",
        cfg,
        "--host",
        host,
        "--port",
        str(free_port()),
        cwd=tmp_path,
        timeout=30,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    line = one_line(stderr)
    assert host in line
    assert "tokens" in line
    assert "--insecure-no-auth" in line
    assert not db.exists()  # refused before touching anything


@pytest.mark.parametrize(
    "argv",
    [["migrate"], ["events"], ["events", "show", "1"], ["verify"], ["status"], ["export"]],
)
def test_a_file_that_is_not_sqlite_is_one_line_and_exit_1(tmp_path, argv):
    not_sqlite = tmp_path / "README.md"
    not_sqlite.write_text("# hookledger\n\nA webhook ledger, and not a database at all.\n" * 20)
    before = not_sqlite.read_bytes()
    result = run_cli(
        *argv, cwd=tmp_path, env={"HOOKLEDGER_DATABASE_URL": f"sqlite:///{not_sqlite}"}
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "file is not a database" in one_line(stderr)
    assert not_sqlite.read_bytes() == before


def test_serve_on_a_port_in_use_is_one_line_before_migrating(tmp_path):
    import socket

    db = tmp_path / "serve.db"
    cfg = write_config(tmp_path / "hookledger.toml", f"sqlite:///{db}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--config", cfg, "--port", str(port), cwd=tmp_path, timeout=30)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    line = one_line(stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line
    assert not db.exists()  # refused before migrating anything


def test_serve_prints_each_start_up_warning_once(tmp_path):
    """`serve` warns before starting its workers; the workers do not say it again."""
    db = tmp_path / "serve.db"
    cfg = write_config(
        tmp_path / "hookledger.toml",
        f"sqlite:///{db}",
        '[sources.gh]\nverifier = "github"\nsecret_env = "HL_TEST_UNSET_SECRET"\n',
    )
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKLEDGER_", "HL_TEST"))}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--config", cfg, "--port", str(port)],
            cwd=tmp_path,
            env={**base, "PYTHONPATH": str(ROOT)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while b"Application startup complete" not in log.read_bytes():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=20)
    text = log.read_text()
    assert text.count("source 'gh' is not configured: HL_TEST_UNSET_SECRET is unset") == 1, text


def test_verify_and_import_piped_print_their_result_line_alone(tmp_path):
    cfg = write_config(tmp_path / "hookledger.toml", f"sqlite:///{tmp_path / 'a.db'}")
    assert run_cli("migrate", "--config", cfg, cwd=tmp_path).returncode == 0
    verified = run_cli("verify", "--config", cfg, cwd=tmp_path)
    assert (verified.returncode, verified.stdout, verified.stderr) == (
        0,
        b"chain intact: 0 events checked\n",
        b"",
    )
    export = tmp_path / "empty.jsonl"
    export.write_bytes(b"")
    other = write_config(tmp_path / "other.toml", f"sqlite:///{tmp_path / 'b.db'}")
    assert run_cli("migrate", "--config", other, cwd=tmp_path).returncode == 0
    imported = run_cli("import", str(export), "--config", other, cwd=tmp_path)
    assert (imported.returncode, imported.stdout, imported.stderr) == (
        0,
        b"imported 0 events; chain verified\n",
        b"",
    )
