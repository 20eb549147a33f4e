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


_ENGINES: list = []


def _engine(config: Config):
    from ledger.db import make_engine

    engine = make_engine(config.database_url)
    _ENGINES.append(engine)  # disposed when the command ends (see `main`)
    return engine


# --- commands ---------------------------------------------------------------


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


def cmd_send(args: argparse.Namespace, config: Config) -> int:
    from ledger.send import post, signed_request

    source = config.sources.get(args.source)
    if source is None:
        known = ", ".join(config.sources) or "none"
        raise ConfigError(f"no source named {args.source!r} is configured (sources: {known})")
    try:
        with (
            open(args.file, "rb")
            if args.file != "-"
            else contextlib.nullcontext(sys.stdin.buffer) as f
        ):
            body = f.read()
    except OSError as e:
        raise HookledgerError(f"{args.file}: {e.strerror}") from None
    headers, query = signed_request(
        source, body, event_id=args.id, event_type=args.type, content_type=args.content_type
    )
    url = args.url or f"http://127.0.0.1:8000/hooks/{source.name}"
    if query:
        url += ("&" if "?" in url else "?") + query
    reply = post(url, body, headers)
    style = "green" if 200 <= reply.status < 300 else "red"
    err.print(f"{reply.status} from {url}", style=style, markup=False)
    out.print(reply.body.decode("utf-8", "replace"), markup=False, soft_wrap=True)
    return 0 if 200 <= reply.status < 300 else 1


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    """An argparse type: '30d', '12h', '90m', '45s' or '2w' as seconds."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h or 90m, got {text!r}")
    return int(number) * _UNITS[unit]


def cmd_rejections(args: argparse.Namespace, config: Config) -> int:
    import time

    import orjson
    from rich.table import Table

    from ledger.db import translated, writer
    from ledger.store import list_rejections, prune_rejections
    from ledger.timefmt import iso_from_us

    engine = _engine(config)
    if args.rejections_cmd == "prune":
        cutoff = time.time_ns() // 1000 - args.older_than * 1_000_000
        with translated(), writer(engine.connect()) as conn, conn.begin():
            removed = prune_rejections(conn, cutoff)
        out.print(f"pruned {removed} rejections received before {iso_from_us(cutoff)}")
        return 0
    with translated(), engine.connect() as conn:
        rows = list_rejections(conn, source=args.source, limit=args.limit)
    table = Table("id", "received at", "source", "reason", "remote", "size", "signature headers")
    for r in rows:
        names = [n for n, _ in orjson.loads(r.headers)]
        signing = [n for n in names if "sign" in n or "hmac" in n or n == "authorization"]
        table.add_row(
            str(r.id),
            iso_from_us(r.received_at_us),
            r.source,
            r.reason,
            r.remote_addr or "",
            str(r.body_size),
            ", ".join(signing),
        )
    out.print(table)
    if not rows:
        err.print("no rejections")
    return 0


# --- parser -----------------------------------------------------------------


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (a negative LIMIT fails on PostgreSQL)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


Plugin = Callable[[Callable[..., argparse.ArgumentParser], argparse.ArgumentParser], None]


def build_parser(plugins: Sequence[Plugin] = ()) -> argparse.ArgumentParser:
    """The parser with the log's commands, plus those each plugin adds (`api.cli`)."""
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

    def add(name: str, fn: Callable | None, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if fn is not None:
            p.set_defaults(fn=fn)
        return p

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
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
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
    p = add("send", cmd_send, "sign FILE the way SOURCE's provider does and POST it (a test tool)")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("file", metavar="FILE", help="the body to send, or - for stdin")
    p.add_argument("--url", help="endpoint (default http://127.0.0.1:8000/hooks/SOURCE)")
    p.add_argument("--id", help="event id, for schemes that carry it in a header")
    p.add_argument("--type", help="event type, for schemes that carry it in a header")
    p.add_argument("--content-type", default="application/json", help="default application/json")

    p = add("rejections", cmd_rejections, "list refused deliveries, or prune old ones")
    p.add_argument("--source", help="only this source")
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    rej_sub = p.add_subparsers(dest="rejections_cmd", metavar="prune")
    prune = rej_sub.add_parser("prune", parents=[common], help="delete old rejections")
    prune.add_argument(
        "--older-than", type=duration, required=True, metavar="AGE", help="e.g. 30d, 12h"
    )

    for plugin in plugins:
        plugin(add, common)
    return parser


def main(argv: Sequence[str] | None = None, plugins: Sequence[Plugin] = ()) -> int:
    """Run one command; `api.cli.main` is the console script and passes its plugins."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic announces each of its plugins at INFO on import: noise on every command.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    args = build_parser(plugins).parse_args(argv)
    try:
        config = load_config(getattr(args, "config", None))
        return args.fn(args, config)
    except ConfigError as e:
        # markup=False: messages quote user input, which may contain [brackets]
        err.print(f"hookledger: {e}", style="red", markup=False, soft_wrap=True)
        return 2
    except HookledgerError as e:
        err.print(f"hookledger: {e}", style="red", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        while _ENGINES:
            _ENGINES.pop().dispose()


if __name__ == "__main__":
    sys.exit(main())
