"""What every `hookledger` command shares: the engine it opens, its progress bars and
argument types, and how a command module adds its commands to the one parser
(`api.cli`, which lists the modules). Kept light: `hookledger --help` imports it.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ledger.config import Config
from ledger.terminal import err, visible

if TYPE_CHECKING:
    from rich.progress import Progress
    from sqlalchemy import Engine

CommandFn = Callable[[argparse.Namespace, Config], int]
# add(name, fn, help) -> the command's own parser (fn None: it has subcommands)
AddCommand = Callable[[str, CommandFn | None, str], argparse.ArgumentParser]

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def print_error(message: object, prefix: str = "hookledger: ") -> None:
    """How every command reports a failure: one red line on standard error, `prefix`
    then `message` with its control characters (line breaks too) shown as escapes,
    since messages quote config values, paths and what the database or a sender said."""
    err.print(prefix + visible(message), style="red")


def progress() -> Progress:
    """A progress bar on standard error (quiet when it is not a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # piped or logged: the result line alone, no blank line
    )


_ENGINES: list[Any] = []


def open_engine(config: Config) -> Engine:
    """The configured database's engine, disposed when the command ends."""
    from ledger.recorder import make_engine

    engine = make_engine(config.database_url)
    _ENGINES.append(engine)
    return engine


def dispose_engines() -> None:
    """Close what `open_engine` opened (`api.cli.main`, when a command ends)."""
    while _ENGINES:
        _ENGINES.pop().dispose()


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a negative LIMIT fails on PostgreSQL)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
