"""The log's commands: migrate, verify, export, import, erase."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from ledger.command_line import AddCommand, open_engine, positive_int, print_error, progress
from ledger.config import Config
from ledger.errors import ConfigError, HookledgerError
from ledger.terminal import counted, err, out  # text consoles: wire values are never markup

# --- commands ---------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    from ledger import migrate

    engine = open_engine(config)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine)
    after = migrate.current_revision(engine)
    if before == after:
        out.print(f"already at head ({after})")
    else:
        out.print(f"migrated {before or 'empty database'} -> {after}")
    return 0


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    from ledger import verify_job
    from ledger.integrity import past_head
    from ledger.recorder import read_head, translated

    engine = open_engine(config)
    with translated(), engine.connect() as conn:
        head, _ = read_head(conn)
    start = max(args.start, 1)
    problem = past_head(start, head)
    if problem is not None:
        raise ConfigError(f"--from {start}: {problem}")
    if start > 1 and start == head + 1:
        out.print(f"nothing to check: --from {start} is just past the head (position {head})")
        return 0
    job, started = verify_job.claim(engine, start, "cli")
    if not started:
        err.print(
            f"joining the verification already running (from position {job.start}, "
            f"started {job.doc()['started_at']})",
            markup=False,
        )
    with progress() as bar:
        task = bar.add_task("verifying", total=job.total)
        if started:
            verify_job.run(engine, job, lambda n: bar.advance(task, n))
        while True:
            job = verify_job.read(engine, job.id)
            bar.update(task, completed=job.checked)
            if not job.running:
                break
            time.sleep(0.25)
    result = job.result or {}
    if job.state != "finished":
        raise HookledgerError(f"the verification did not finish: {result.get('error', job.state)}")
    if result["ok"]:
        erased = result.get("erased")
        bodies = f", {counted(erased, 'erased body', 'erased bodies')}" if erased else ""
        out.print(f"chain intact: {counted(result['checked'], 'event')} checked{bodies}")
        return 0
    print_error(
        f"chain broken at position {result['first_bad_position']}: {result['reason']}"
        f" ({intact_before(result['checked'], job.start)})",
        prefix="",
    )
    return 1


def intact_before(checked: int, start: int) -> str:
    """How many positions before a break were checked and found intact, and which."""
    if checked == 0:
        return "no events before it were checked"
    if checked == 1:
        return "1 event before it is intact" + (f": position {start}" if start > 1 else "")
    where = f": positions {start} to {start + checked - 1}" if start > 1 else ""
    return f"{checked} events before it are intact{where}"


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ledger.transfer import export_lines

    engine = open_engine(config)
    count = 0
    if args.output in (None, "-"):
        sink = sys.stdout.buffer
        for line in export_lines(engine, args.start, args.stop):
            sink.write(line)
            count += 1
        sink.flush()
    else:
        tmp = args.output + ".partial"
        try:
            with open(tmp, "wb") as sink:
                for line in export_lines(engine, args.start, args.stop):
                    sink.write(line)
                    count += 1
            os.replace(tmp, args.output)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise HookledgerError(f"cannot write {args.output}: {e.strerror}") from None
    err.print(f"exported {count} events")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from ledger.transfer import import_lines

    engine = open_engine(config)
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


def cmd_erase(args: argparse.Namespace, config: Config) -> int:
    import getpass

    from ledger.erase import Criteria, erase, plan
    from ledger.timefmt import us_from_iso

    before = None
    if args.before is not None:
        try:
            before = us_from_iso(args.before)
        except ValueError:
            raise ConfigError(f"--before: expected an ISO 8601 date, got {args.before!r}") from None
    criteria = Criteria(before, args.source, args.start, args.stop)
    if criteria == Criteria():
        raise ConfigError("erase needs at least one of --before, --source, --from, --to")
    engine = open_engine(config)
    planned = plan(engine, criteria)
    if planned.count == 0:
        out.print("nothing to erase: no stored body matches")
        return 0
    err.print(
        f"this erases {counted(planned.count, 'body', 'bodies')} "
        f"(positions {planned.first} to {planned.last}); "
        "their digests, headers and the chain stay"
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("erasing cannot be undone: pass --yes to confirm")
        if input("type 'erase' to confirm: ").strip() != "erase":
            err.print("nothing erased")
            return 1
    actor = os.environ.get("HOOKLEDGER_ACTOR") or getpass.getuser()
    with progress() as bar:
        task = bar.add_task("erasing", total=planned.count)
        done = erase(engine, criteria, actor, args.reason, lambda n: bar.advance(task, n))
    erased = counted(done.count, "body", "bodies")
    out.print(f"erased {erased} (recorded as by {actor}); `verify` still passes")
    return 0


def add_commands(add: AddCommand, common: argparse.ArgumentParser) -> None:
    """migrate, verify, export, import, erase."""
    add("migrate", cmd_migrate, "upgrade the configured database to the newest schema")

    p = add("verify", cmd_verify, "re-compute the hash chain and body digests")
    p.add_argument(
        "--from", dest="start", type=int, default=1, metavar="POS", help="first position"
    )

    p = add("export", cmd_export, "write the log as chained JSON Lines, the format `import` reads")
    p.add_argument("--from", dest="start", type=int, default=1, metavar="POS")
    p.add_argument("--to", dest="stop", type=int, default=None, metavar="POS")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default stdout)")

    p = add("import", cmd_import, "load an export into an empty ledger, verifying the chain")
    p.add_argument("file", metavar="FILE", help="JSON Lines export, or - for stdin")
    p = add("erase", cmd_erase, "erase bodies (retention), keeping digests and the chain intact")
    p.add_argument("--before", metavar="DATE", help="bodies received before this time")
    p.add_argument("--source", help="only this source")
    p.add_argument("--from", dest="start", type=positive_int, metavar="POS")
    p.add_argument("--to", dest="stop", type=positive_int, metavar="POS")
    p.add_argument("--reason", help="why, kept with the erasure record")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
