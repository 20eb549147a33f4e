"""The benchmarks, one entry point: `python -m bench COMMAND [options]`.

- ingest: durable signed deliveries per second against the ceiling and the tutorial
  receivers (writes docs/performance.md with `--output`);
- rebuild: `hookledger rebuild` against a hand-written upsert loop (`bench.rebuild`);
- latency: catch-up and point-read latencies (`bench.latency`);
- flood: real ingest latency beside a flood of bad signatures (`bench.flood`).
- appender: `append_batch` and its commit on their own, CPU per delivery (`bench.appender`).
- scale: read requests at 100k, 1M and 3M events, built by import (`bench.scale`).
- rebuild-ingest: ingest latency and errors while a big projection rebuilds
  (`bench.rebuild_ingest`).
- deliver: destinations' events per second against a bare httpx client, and the
  latency from ingest to the receiver (`bench.deliver`).

Each command's own options: `python -m bench COMMAND --help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bench import ingest

# Commands that parse their own options: the module's main(argv) runs them.
DELEGATED = {
    "rebuild": "bench.rebuild",
    "latency": "bench.latency",
    "flood": "bench.flood",
    "appender": "bench.appender",
    "scale": "bench.scale",
    "rebuild-ingest": "bench.rebuild_ingest",
    "deliver": "bench.deliver",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmark."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help=ingest.__doc__.splitlines()[0], description=ingest.__doc__)
    ingest.add_arguments(p)
    for name, module in DELEGATED.items():
        sub.add_parser(name, help=f"see python -m bench {name} --help ({module})", add_help=False)
    args = parser.parse_args(argv)
    return ingest.run(args)


if __name__ == "__main__":
    sys.exit(main())
