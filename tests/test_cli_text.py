"""Wire text in the CLI (issue 13 item 13): every value from the wire or the database is
printed as text, never as rich markup, with control characters shown as escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table

from api.cli import main
from ledger.chain import canonical_headers
from ledger.command_line import print_error
from ledger.config import load_config
from ledger.terminal import visible
from projections import leases
from projections.adapters import load_adapters
from projections.python import Projection
from projections.worker import Worker
from tests.helpers import append, new_event
from tests.projection_support import drain

CLOSE = "[/]"
LINK = "[link=https://x]y[/link]"
RED = "\x1b[31m"
SHOWN_RED = "\\x1b[31m"
CONTROLS = "a\x00b\x07c\x7fd\x9be\u202ef\r"  # NUL, BEL, DEL, C1 CSI, bidi override, CR


class Echo(Projection):
    """Fails on every event with its event type as the message: wire text in `last_error`."""

    version = 1

    def table(self, metadata: MetaData, name: str) -> Table:
        return Table(name, metadata, Column("position", Integer, primary_key=True))

    def apply(self, conn: Connection, table: Table, events) -> None:
        for e in events:
            raise ValueError(f"refused {e.event_type}")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("HOOKLEDGER_DATABASE_URL", raising=False)
    monkeypatch.delenv("HOOKLEDGER_CONFIG", raising=False)


def config(tmp_path: Path, engine: Engine, body: str = "") -> str:
    path = tmp_path / "hookledger.toml"
    url = engine.url.render_as_string(hide_password=False)
    path.write_text(f'database_url = "{url}"\n{body}')
    return str(path)


def hostile(engine: Engine) -> None:
    """Events whose source, type, id and headers are markup and escape sequences."""
    headers = canonical_headers(
        [(b"x-close", CLOSE.encode()), (b"x-link", LINK.encode()), (b"x-red", RED.encode())]
    )
    append(
        engine,
        [
            new_event(
                b'{"a": "' + RED.encode().replace(b"\x1b", b"\\u001b") + b'"}',
                source=LINK,
                event_id=RED + "id",
                event_type=CLOSE,
                headers=headers,
            ),
            new_event(b"[/] \x1b[2J body", source="app", event_id=LINK, event_type=RED + "t"),
        ],
    )


def assert_as_text(shown: str) -> None:
    assert "\x1b" not in shown, repr(shown)
    assert "\x9b" not in shown and "\x07" not in shown


def test_visible_escapes_every_control_character():
    assert visible(RED) == SHOWN_RED
    assert visible(CONTROLS) == "a\\x00b\\x07c\\x7fd\\x9be\\u202ef\\r"
    assert visible("line\nnext\tcol", keep="\n\t") == "line\nnext\tcol"
    assert visible("line\nnext") == "line\\nnext"
    assert visible(visible(RED)) == SHOWN_RED  # escaping twice changes nothing
    assert visible(None) == "" and visible("[/] plain é") == "[/] plain é"


def test_events_list_prints_markup_and_escapes_as_text(tmp_path, engine, capsys):
    hostile(engine)
    path = config(tmp_path, engine)
    assert main(["events", "--config", path]) == 0
    captured = capsys.readouterr()
    assert_as_text(captured.out + captured.err)
    assert CLOSE in captured.out
    assert LINK in captured.out  # the source, whole: no hyperlink made of it
    assert SHOWN_RED + "id" in captured.out and SHOWN_RED + "t" in captured.out


def test_events_show_prints_fields_headers_and_body_as_text(tmp_path, engine, capsys):
    hostile(engine)
    path = config(tmp_path, engine)
    assert main(["events", "show", "1", "--config", path]) == 0
    shown = capsys.readouterr().out
    assert_as_text(shown)
    assert f"event type  {CLOSE}" in shown
    assert f"source  {LINK}" in shown
    assert f"event id  {SHOWN_RED}id" in shown
    assert f"x-close: {CLOSE}" in shown and f"x-link: {LINK}" in shown
    assert f"x-red: {SHOWN_RED}" in shown
    assert '"a": "\\u001b[31m"' in shown  # pretty JSON keeps the escape as JSON does

    assert main(["events", "show", "2", "--config", path]) == 0
    shown = capsys.readouterr().out
    assert_as_text(shown)
    assert "[/] \\x1b[2J body" in shown and f"event id  {LINK}" in shown


def test_rejections_print_wire_text_as_text(tmp_path, engine, capsys):
    from ledger.recorder import Rejection, writer
    from ledger.recorder.rejections import keep

    rejection = Rejection(
        source=CLOSE,
        received_at_us=1_700_000_000_000_000,
        reason="bad_signature",
        headers=canonical_headers([(b"x-" + RED.encode() + b"-sign", b"v")]),
        query="",
        body=b"x",
        remote_addr=LINK,
        detail=None,
    )
    with writer(engine.connect()) as conn, conn.begin():
        keep(conn, [rejection], {(CLOSE, "bad_signature"): [1, 0]}, max_bytes=1 << 20)
    path = config(tmp_path, engine)
    assert main(["rejections", "--config", path]) == 0
    shown = capsys.readouterr().out
    assert_as_text(shown)
    assert CLOSE in shown and LINK in shown and f"x-{SHOWN_RED}-sign" in shown


def test_rejections_filter_by_reason_and_refuse_an_unknown_one(tmp_path, engine, capsys):
    from ledger.recorder import Rejection, writer
    from ledger.recorder.rejections import keep

    def rejected(reason: str, body: bytes) -> Rejection:
        return Rejection(
            source="app",
            received_at_us=1_700_000_000_000_000,
            reason=reason,
            headers=canonical_headers([]),
            query="",
            body=body,
            remote_addr="10.0.0.1",
            detail=None,
        )

    batch = [rejected("bad_signature", b"x"), rejected("missing_signature", b"yy")]
    with writer(engine.connect()) as conn, conn.begin():
        keep(conn, batch, {}, max_bytes=1 << 20)
    path = config(tmp_path, engine)
    assert main(["rejections", "--reason", "missing_signature", "--config", path]) == 0
    shown = capsys.readouterr().out
    assert "missing_signature" in shown and "bad_signature" not in shown
    assert main(["rejections", "--reason", "bogus", "--config", path]) == 2
    said = capsys.readouterr().err
    assert "unknown reason 'bogus'" in said and "source_not_configured" in said


def test_status_prints_a_projection_error_as_text(tmp_path, engine, capsys):
    hostile(engine)
    path = config(tmp_path, engine, '[projections.echo]\nclass = "tests.test_cli_text:Echo"\n')
    projectors = load_adapters(load_config(path))
    drain(Worker(engine, projectors, owner="test"))
    leases.release_lease(engine, "echo", "test")
    assert main(["status", "--config", path]) == 1  # failed
    shown = capsys.readouterr().out
    assert_as_text(shown)
    assert f"refused {CLOSE}" in shown


def test_every_error_is_one_line_of_text(tmp_path, capsys):
    # A path with markup, an ESC sequence and a line break, quoted by a ConfigError.
    name = f"[bold]{RED}x\ny.toml"
    (tmp_path / name).write_text("this is = = not toml")
    assert main(["status", "--config", str(tmp_path / name)]) == 2
    shown = capsys.readouterr().err
    assert shown.startswith("hookledger: ") and shown.count("\n") == 1, repr(shown)
    assert f"[bold]{SHOWN_RED}x\\ny.toml" in shown and "\x1b" not in shown
    print_error(f"halted: {RED}\tbad{LINK}", prefix="")
    assert capsys.readouterr().err == f"halted: {SHOWN_RED}\\tbad{LINK}\n"
