"""The `hookledger` console script: one parser, built here from the command modules.

Each module in COMMAND_MODULES has `add_commands(add, common)`, which adds its
commands with their arguments; a command imports what it needs when it runs, so
`hookledger --help` stays quick. Every command takes `--config FILE`. Errors are
one line on standard error and a non-zero exit (2 for configuration problems, 1
for the others); never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from api import serve_command
from destinations import commands as destination_commands
from ledger import audit_commands, log_commands
from ledger.command_line import CommandFn, dispose_engines, print_error
from ledger.config import load_config
from ledger.errors import HookledgerError
from projections import commands as projection_commands

COMMAND_MODULES = (
    log_commands,
    audit_commands,
    projection_commands,
    destination_commands,
    serve_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
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

    def add(name: str, fn: CommandFn | None, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if fn is not None:
            p.set_defaults(fn=fn)
        return p

    for module in COMMAND_MODULES:
        module.add_commands(add, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hookledger` console script: run one command."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic announces each of its plugins at INFO on import, and its migration context
    # ("Context impl SQLiteImpl.") on every upgrade: noise beside our own one line.
    # httpx logs a line per request at INFO: a destination's every POST.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        config = load_config(getattr(args, "config", None))
        return args.fn(args, config)
    except HookledgerError as e:  # ConfigError exits 2, the others 1
        print_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        dispose_engines()


if __name__ == "__main__":
    sys.exit(main())
