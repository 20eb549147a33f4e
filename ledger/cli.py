"""The `hookledger` command line.

Every command takes `--config FILE`. Errors are one line on standard
error and a non-zero exit (2 for configuration problems); never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.config import Config, load_config
from ledger.errors import ConfigError, HookledgerError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def progress() -> Progress:
    """A progress bar on standard error (quiet when it is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def _engine(config: Config):
    from ledger.db import make_engine

    return make_engine(config.database_url)


# --- commands ---------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from api.app import startup_warnings
    from ledger import migrate

    if not config.tokens and not is_loopback(args.host) and not args.insecure_no_auth:
        raise ConfigError(
            f"refusing to serve {args.host} with no [[tokens]] configured: the API would be "
            "open to the network. Configure tokens, bind 127.0.0.1, or pass --insecure-no-auth"
        )
    engine = _engine(config)
    migrate.upgrade(engine)
    engine.dispose()
    for warning in startup_warnings(config):
        err.print(f"[yellow]warning:[/] {warning}")
    if config.path:
        os.environ["HOOKLEDGER_CONFIG"] = os.path.abspath(config.path)
    os.environ["HOOKLEDGER_DATABASE_URL"] = config.database_url
    err.print(f"hookledger serving on http://{args.host}:{args.port} ({_where(config)})")
    uvicorn.run(
        "api.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0


def _where(config: Config) -> str:
    from ledger.db import make_engine

    url = make_engine(config.database_url).url
    return f"database {url.render_as_string(hide_password=True)}"


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    from ledger import migrate

    engine = _engine(config)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine)
    after = migrate.current_revision(engine)
    if before == after:
        out.print(f"already at head ({after})")
    else:
        out.print(f"migrated {before or 'empty database'} -> {after}")
    return 0


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    from ledger.db import translated
    from ledger.store import read_head
    from ledger.verify import verify_ledger

    engine = _engine(config)
    with translated(), engine.connect() as conn:
        head, _ = read_head(conn)
    start = max(args.start, 1)
    with progress() as bar:
        task = bar.add_task("verifying", total=max(head - start + 1, 0))
        result = verify_ledger(engine, start, lambda n: bar.advance(task, n))
    if result.ok:
        erased = f", {result.erased} erased bodies" if result.erased else ""
        out.print(f"chain intact: {result.checked} events checked{erased}")
        return 0
    err.print(
        f"[red]chain broken at position {result.first_bad_position}:[/] {result.reason}"
        f" ({result.checked} events before it are intact)"
    )
    return 1


def cmd_events(args: argparse.Namespace, config: Config) -> int:
    if args.events_cmd == "show":
        return _event_show(args, config)
    from rich.table import Table

    from ledger.db import translated
    from ledger.store import list_events
    from ledger.timefmt import iso_from_us, us_from_iso

    def instant(text: str | None, flag: str) -> int | None:
        if text is None:
            return None
        try:
            return us_from_iso(text)
        except ValueError:
            raise ConfigError(f"{flag}: expected an ISO 8601 time, got {text!r}") from None

    engine = _engine(config)
    with translated(), engine.connect() as conn:
        rows = list_events(
            conn,
            source=args.source,
            event_type=args.type,
            after=args.after,
            since_us=instant(args.since, "--since"),
            limit=args.limit,
        )
    table = Table("position", "received at", "source", "type", "event id", "size", "dup of")
    for r in rows:
        table.add_row(
            str(r.position),
            iso_from_us(r.received_at_us),
            r.source,
            r.event_type or "",
            r.event_id or "",
            "erased" if r.body_size is None else str(r.body_size),
            "" if r.duplicate_of is None else str(r.duplicate_of),
        )
    out.print(table)
    if not rows:
        err.print("no events match")
    return 0


def _event_show(args: argparse.Namespace, config: Config) -> int:
    import orjson

    from ledger.db import translated
    from ledger.store import get_event
    from ledger.timefmt import iso_from_us

    engine = _engine(config)
    with translated(), engine.connect() as conn:
        row = get_event(conn, args.position)
    if row is None:
        err.print(f"[red]no event at position {args.position}[/]")
        return 1
    if args.raw:
        if row.body is None:
            err.print(f"[red]the body of position {args.position} was erased[/]")
            return 1
        sys.stdout.buffer.write(row.body)
        sys.stdout.buffer.flush()
        return 0
    fields = [
        ("position", row.position),
        ("received at", iso_from_us(row.received_at_us)),
        ("source", row.source),
        ("event id", row.event_id),
        ("event type", row.event_type),
        ("verification", row.verification),
        ("duplicate of", row.duplicate_of),
        ("content type", row.content_type),
        ("remote addr", row.remote_addr),
        ("query", row.query),
        ("body sha256", row.body_sha256),
        ("hash", row.hash),
    ]
    for name, value in fields:
        out.print(f"[bold]{name:>13}[/]  {'' if value is None else value}")
    out.print("[bold]      headers[/]")
    for name, value in orjson.loads(row.headers):
        out.print(f"  {name}: {value}", markup=False)
    out.print("[bold]         body[/]")
    if row.body is None:
        out.print("  (erased)")
    else:
        try:
            text = row.body.decode("utf-8")
            with contextlib.suppress(orjson.JSONDecodeError):
                text = orjson.dumps(orjson.loads(row.body), option=orjson.OPT_INDENT_2).decode()
            out.print(text, markup=False, soft_wrap=True)
        except UnicodeDecodeError:
            out.print(f"  ({len(row.body)} bytes, not UTF-8: use --raw)")
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ledger.transfer import export_lines

    engine = _engine(config)
    count = 0
    if args.output in (None, "-"):
        sink = sys.stdout.buffer
        for line in export_lines(engine, args.start, args.stop):
            sink.write(line)
            count += 1
        sink.flush()
    else:
        tmp = args.output + ".partial"
        with open(tmp, "wb") as sink:
            for line in export_lines(engine, args.start, args.stop):
                sink.write(line)
                count += 1
        os.replace(tmp, args.output)
    err.print(f"exported {count} events")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from ledger.transfer import import_lines

    engine = _engine(config)
    if args.file == "-":
        count = import_lines(engine, sys.stdin.buffer)
    else:
        try:
            stream = open(args.file, "rb")  # noqa: SIM115
        except OSError as e:
            raise HookledgerError(f"{args.file}: {e.strerror}") from None
        with stream, progress() as bar:
            task = bar.add_task("importing", total=None)
            count = import_lines(engine, stream, lambda n: bar.advance(task, n))
    out.print(f"imported {count} events; chain verified")
    return 0


# --- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,  # so a subcommand's default never hides the parent's value
        help="TOML config (default: $HOOKLEDGER_CONFIG, else ./hookledger.toml, else built-ins)",
    )
    parser = argparse.ArgumentParser(
        prog="hookledger",
        description="A webhook ledger: verbatim, hash-chained ingest with rebuildable projections.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        return p

    p = add("serve", cmd_serve, "migrate, then serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    p.add_argument(
        "--no-projector", action="store_true", help="do not run projectors in this process"
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback address with no [[tokens]] configured",
    )

    add("migrate", cmd_migrate, "upgrade the configured database to the newest schema")

    p = add("verify", cmd_verify, "re-compute the hash chain and body digests")
    p.add_argument(
        "--from", dest="start", type=int, default=1, metavar="POS", help="first position"
    )

    p = add("events", cmd_events, "list events, or show one with `events show POS`")
    p.add_argument("--source", help="only this source")
    p.add_argument("--type", help="only this event type")
    p.add_argument("--since", metavar="ISO", help="received at or after this time")
    p.add_argument("--after", type=int, default=0, metavar="POS", help="positions after POS")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ev_sub = p.add_subparsers(dest="events_cmd", metavar="show")
    show = ev_sub.add_parser("show", parents=[common], help="one event in full")
    show.add_argument("position", type=int, metavar="POS")
    show.add_argument("--raw", action="store_true", help="write the exact body bytes to stdout")

    p = add("export", cmd_export, "write the log as JSON Lines (SPEC 4.3)")
    p.add_argument("--from", dest="start", type=int, default=1, metavar="POS")
    p.add_argument("--to", dest="stop", type=int, default=None, metavar="POS")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default stdout)")

    p = add("import", cmd_import, "load an export into an empty ledger, verifying the chain")
    p.add_argument("file", metavar="FILE", help="JSON Lines export, or - for stdin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hookledger` console script."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        config = load_config(getattr(args, "config", None))
        return args.fn(args, config)
    except ConfigError as e:
        err.print(f"[red]hookledger: {e}[/]", markup=True, soft_wrap=True)
        return 2
    except HookledgerError as e:
        err.print(f"[red]hookledger: {e}[/]", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
