"""`python -m bench ingest [--duration 10] [--connections 64] [--output docs/performance.md]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import ingest


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help=ingest.__doc__, description=ingest.__doc__)
    ingest.add_arguments(p)
    args = parser.parse_args(argv)
    return ingest.run(args)


if __name__ == "__main__":
    sys.exit(main())
