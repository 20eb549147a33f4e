"""A backup-restore cycle of a large ledger, in bounded memory, through the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from ledger import migrate
from ledger.recorder import iter_events, make_engine, read_head
from tests.helpers import append, new_event

EVENTS = 3000
BODY = 32 * 1024  # ~96 MiB of bodies: an export that buffered them would show in its RSS


def run_measured(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI as a child and return its result and its peak RSS in MiB."""
    # VmHWM starts afresh at exec; ru_maxrss would include the (large) pytest parent's
    # memory at fork.
    code = (
        "import sys; from api.cli import main; rc = main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
        "print('RSS', hwm.split()[1], file=sys.stderr); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    rss = [line for line in done.stderr.splitlines() if line.startswith("RSS ")]
    assert rss, done.stderr
    return done, int(rss[-1].split()[1]) / 1024


def test_export_then_import_a_large_ledger_in_bounded_memory(db_url, tmp_path):
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    for first in range(0, EVENTS, 500):
        append(
            engine,
            [
                new_event(os.urandom(BODY // 2).hex().encode(), event_id=str(i))
                for i in range(first, first + 500)
            ],
        )
    with engine.connect() as conn:
        head = read_head(conn)
    digests = [r.body_sha256 for r in iter_events(engine)]
    engine.dispose()

    backup = tmp_path / "backup.jsonl"
    done, export_rss = run_measured(
        ["export", "-o", str(backup)], {"HOOKLEDGER_DATABASE_URL": db_url}
    )
    assert done.returncode == 0, done.stderr
    assert backup.stat().st_size > EVENTS * BODY  # base64 bodies: the whole ledger is in the file

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    env = {"HOOKLEDGER_DATABASE_URL": target}
    assert run_measured(["migrate"], env)[0].returncode == 0
    done, import_rss = run_measured(["import", str(backup)], env)
    assert done.returncode == 0, done.stderr
    done, _ = run_measured(["verify"], env)
    assert done.returncode == 0 and f"{EVENTS} events checked" in done.stdout

    restored = make_engine(target)
    with restored.connect() as conn:
        assert read_head(conn) == head
    assert [hashlib.sha256(r.body).hexdigest() for r in iter_events(restored)] == digests
    restored.dispose()
    # The ledger is ~100 MiB of bodies (~130 MiB exported); streaming keeps each process
    # far below that, whatever the ledger's size.
    print(f"export peak RSS {export_rss:.0f} MiB, import peak RSS {import_rss:.0f} MiB")
    assert export_rss < 150, f"export peaked at {export_rss:.0f} MiB"
    assert import_rss < 150, f"import peaked at {import_rss:.0f} MiB"
