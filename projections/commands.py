"""Projection commands of the `hookledger` CLI: status, rebuild, projections retry."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ledger.command_line import AddCommand, open_engine, print_error
from ledger.config import Config
from ledger.errors import ConfigError
from ledger.terminal import err, out, text

if TYPE_CHECKING:
    from projections.adapters import Adapter

# The engine's modules are imported by the commands that use them, not here:
# `hookledger --help` loads this module to list the commands.


def projectors_of(config: Config, only: list[str] | None = None) -> dict[str, Adapter]:
    from projections.adapters import load_adapters

    projectors = load_adapters(config)
    if only:
        unknown = [n for n in only if n not in projectors]
        if unknown:
            raise ConfigError(f"no projection named {unknown[0]!r} is configured")
        projectors = {n: projectors[n] for n in only}
    return projectors


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from rich.table import Table

    from projections.status import status

    projectors = projectors_of(config)
    engine = open_engine(config)
    entries = status(engine, projectors)
    table = Table()
    for header in ("name", "version", "state", "position", "head", "lag", "rows"):
        # never cut these to fit a narrow (or piped, 80-column) output: wrap the rest instead
        table.add_column(header, no_wrap=True)
    table.add_column("rebuild")
    table.add_column("last error")
    for e in entries:
        rebuild = e["rebuild"]
        table.add_row(
            text(e["name"]),
            "-" if e["version"] is None else str(e["version"]),
            text(e["state"]),
            str(e["position"]),
            str(e["head"]),
            str(e["lag"]),
            str(e["rows"]),
            text(_rebuild_cell(rebuild)),
            text(
                ""
                if e["last_error"] is None
                else f"@{e['last_error']['position']}: {e['last_error']['error']}"
            ),
        )
    out.print(table)
    if not entries:
        err.print("no projections are configured")
    for e in entries:
        if e["outdated"]:
            err.print(
                f"{e['name']}: the workers run an older definition than the one on disk "
                "(its code or config changed): restart them to build the new version",
                markup=False,
            )
    failed = [
        e
        for e in entries
        if e["state"] == "failed" or (e["rebuild"] and e["rebuild"]["state"] == "failed")
    ]
    return 1 if failed else 0


def _rebuild_cell(rebuild: dict | None) -> str:
    if rebuild is None:
        return ""
    if rebuild["state"] == "failed":
        return f"v{rebuild['version']} FAILED at {rebuild['done']}"
    return f"v{rebuild['version']} {rebuild['percent']}%"


def cmd_rebuild(args: argparse.Namespace, config: Config) -> int:
    from ledger.recorder import translated
    from projections import versions

    projector = projectors_of(config, [args.name])[args.name]
    engine = open_engine(config)
    with translated():
        row, started = versions.request_rebuild(engine, projector)
    word = "started" if started else "already running"
    err.print(f"{projector.name}: rebuild to version {row.version} {word}")
    if args.no_wait:
        return 0
    return _follow(engine, projector, row.version)


def _follow(engine, projector: Adapter, version: int) -> int:
    """Work the rebuild here when no other worker holds the lease; show progress until swap."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ledger.recorder import read_head, translated
    from projections import leases, versions
    from projections.worker import Worker

    worker = Worker(engine, {projector.name: projector})
    bar = Progress(
        TextColumn(f"rebuilding {projector.name} v{version}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} events"),
        TextColumn("{task.fields[rate]:,.0f}/s"),
        TimeRemainingColumn(),
        console=err,
    )
    try:
        with bar:
            task = bar.add_task("rebuild", total=1, rate=0.0)
            while True:
                busy = worker.run_once()
                with translated(), engine.connect() as conn:
                    rows = {r.version: r for r in versions.of(conn, projector.name)}
                    head, _ = read_head(conn)
                row = rows.get(version)
                if row is None or row.status == "abandoned":
                    print_error(
                        f"{projector.name}: version {version} was replaced by a newer build",
                        prefix="",
                    )
                    return 1
                elapsed = max(time.time() - row.build_started_at_us / 1e6, 1e-3)
                bar.update(
                    task, completed=row.position, total=max(head, 1), rate=row.position / elapsed
                )
                if row.state == "failed":
                    print_error(f"{projector.name}: rebuild halted: {row.last_error}", prefix="")
                    return 1
                if row.status in ("live", "retired"):
                    break
                if not busy:
                    time.sleep(0.2)
    finally:
        for name in worker.projectors:
            leases.release_lease(engine, name, worker.owner)
    diff = _diff(rows[version])
    out.print(f"{projector.name}: version {version} is live{diff}")
    return 0


def _diff(row) -> str:
    import orjson

    if not row.diff:
        return ""
    d = orjson.loads(row.diff)
    return f" (rows added {d['added']}, removed {d['removed']}, changed {d['changed']})"


def cmd_retry(args: argparse.Namespace, config: Config) -> int:
    from ledger.recorder import translated
    from projections import failures

    projector = projectors_of(config, [args.name])[args.name]
    engine = open_engine(config)
    with translated():
        resumed = failures.retry(engine, projector.name)
    if resumed:
        out.print(f"{projector.name}: resumed; the projector retries from the failed event")
    else:
        out.print(f"{projector.name}: nothing to retry (not failed)")
    return 0


def add_commands(add: AddCommand, common: argparse.ArgumentParser) -> None:
    """status, rebuild, projections retry."""
    add("status", cmd_status, "one row per projection: version, state, position, lag, rows")
    p = add("rebuild", cmd_rebuild, "rebuild a projection beside the live one, then swap")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--no-wait", action="store_true", help="start it and return at once")
    p = add("projections", None, "projection maintenance: `projections retry NAME`")
    sub = p.add_subparsers(dest="projections_cmd", required=True, metavar="retry")
    r = sub.add_parser(
        "retry", parents=[common], help="resume a projection halted on a handler error"
    )
    r.add_argument("name", metavar="NAME")
    r.set_defaults(fn=cmd_retry)
