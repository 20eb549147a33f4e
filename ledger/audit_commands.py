"""Audit commands of the `hookledger` CLI: events, events show, rejections, send."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ledger.command_line import AddCommand, open_engine, positive_int, print_error
from ledger.config import Config
from ledger.errors import ConfigError, HookledgerError
from ledger.terminal import err, out, text, visible


def cmd_events(args: argparse.Namespace, config: Config) -> int:
    if args.events_cmd == "show":
        return _event_show(args, config)
    from rich.table import Table

    from ledger.recorder import list_events, translated
    from ledger.timefmt import iso_from_us, us_from_iso

    def instant(text: str | None, flag: str) -> int | None:
        if text is None:
            return None
        try:
            return us_from_iso(text)
        except ValueError:
            raise ConfigError(f"{flag}: expected an ISO 8601 time, got {text!r}") from None

    engine = open_engine(config)
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
            text(r.source),
            text(r.event_type),
            text(r.event_id),
            "erased" if r.body_size is None else str(r.body_size),
            "" if r.duplicate_of is None else str(r.duplicate_of),
        )
    out.print(table)
    if not rows:
        err.print("no events match")
    return 0


def _event_show(args: argparse.Namespace, config: Config) -> int:
    import orjson
    from rich.text import Text

    from ledger.recorder import get_event, translated
    from ledger.timefmt import iso_from_us

    engine = open_engine(config)
    with translated(), engine.connect() as conn:
        row = get_event(conn, args.position)
    if row is None:
        print_error(f"no event at position {args.position}", prefix="")
        return 1
    if args.raw:
        if row.body is None:
            print_error(f"the body of position {args.position} was erased", prefix="")
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
        out.print(Text.assemble((f"{name:>13}", "bold"), "  ", text(value)))
    out.print("      headers", style="bold")
    for name, value in orjson.loads(row.headers):
        out.print(Text.assemble("  ", text(name), ": ", text(value)))
    out.print("         body", style="bold")
    if row.body is None:
        out.print("  (erased)")
    else:
        try:
            body = row.body.decode("utf-8")
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.dumps(orjson.loads(row.body), option=orjson.OPT_INDENT_2).decode()
            out.print(visible(body, keep="\n\t"), soft_wrap=True)
        except UnicodeDecodeError:
            out.print(f"  ({len(row.body)} bytes, not UTF-8: use --raw)")
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
    err.print(f"{reply.status} from {url}", style=style)
    out.print(reply.body.decode("utf-8", "replace"), soft_wrap=True)
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

    from ledger.recorder import rejections, translated, writer
    from ledger.timefmt import iso_from_us

    if args.rejections_cmd != "prune" and args.reason is not None:
        problem = rejections.unknown_reason(args.reason)
        if problem is not None:
            raise ConfigError(f"--reason: {problem}")
    engine = open_engine(config)
    if args.rejections_cmd == "prune":
        cutoff = None
        if not args.all:
            cutoff = time.time_ns() // 1000 - args.older_than * 1_000_000
        with translated(), writer(engine.connect()) as conn, conn.begin():
            removed = rejections.prune(conn, cutoff)
        when = "" if cutoff is None else f" received before {iso_from_us(cutoff)}"
        out.print(f"pruned {removed} rejections{when}", markup=False)
        return 0
    with translated(), engine.connect() as conn:
        rows = rejections.list_rejections(
            conn, source=args.source, reason=args.reason, limit=args.limit
        )
    table = Table("id", "received at", "source", "reason", "remote", "size", "signature headers")
    for r in rows:
        names = [n for n, _ in orjson.loads(r.headers)]
        signing = [n for n in names if "sign" in n or "hmac" in n or n == "authorization"]
        table.add_row(
            str(r.id),
            iso_from_us(r.received_at_us),
            text(r.source),
            text(r.reason),
            text(r.remote_addr),
            str(r.body_size),
            text(", ".join(signing)),
        )
    out.print(table)
    if not rows:
        err.print("no rejections")
    return 0


def add_commands(add: AddCommand, common: argparse.ArgumentParser) -> None:
    """events (and events show), send, rejections (and rejections prune)."""
    p = add("events", cmd_events, "list events, or show one with `events show POS`")
    p.add_argument("--source", help="only this source")
    p.add_argument("--type", help="only this event type")
    p.add_argument("--since", metavar="ISO", help="received at or after this time")
    p.add_argument("--after", type=int, default=0, metavar="POS", help="positions after POS")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    ev_sub = p.add_subparsers(dest="events_cmd", metavar="show")
    show = ev_sub.add_parser("show", parents=[common], help="one event in full")
    show.add_argument("position", type=int, metavar="POS")
    show.add_argument("--raw", action="store_true", help="write the exact body bytes to stdout")

    p = add("send", cmd_send, "sign FILE the way SOURCE's provider does and POST it (a test tool)")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("file", metavar="FILE", help="the body to send, or - for stdin")
    p.add_argument("--url", help="endpoint (default http://127.0.0.1:8000/hooks/SOURCE)")
    p.add_argument("--id", help="event id, for schemes that carry it in a header")
    p.add_argument("--type", help="event type, for schemes that carry it in a header")
    p.add_argument("--content-type", default="application/json", help="default application/json")

    p = add("rejections", cmd_rejections, "list refused deliveries, or prune old ones")
    p.add_argument("--source", help="only this source")
    p.add_argument("--reason", help="only this reason, e.g. bad_signature")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    rej_sub = p.add_subparsers(dest="rejections_cmd", metavar="prune")
    prune = rej_sub.add_parser(
        "prune", parents=[common], help="delete old rejections (their counts stay in /metrics)"
    )
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--older-than", type=duration, metavar="AGE", help="received longer ago, e.g. 30d, 12h"
    )
    which.add_argument("--all", action="store_true", help="every rejection")
