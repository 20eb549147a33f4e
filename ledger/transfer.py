"""Export and import the log as JSON Lines (SPEC 4.3), streaming both ways."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import IO, Any

import orjson
from sqlalchemy import Connection, Engine

from ledger import chain
from ledger.erase import record_imported
from ledger.errors import ImportRefused
from ledger.marks import Mark, first_bad_mark
from ledger.recorder import EVENT_COLUMNS, iter_events, read_head, recorder_for, translated, writer
from ledger.timefmt import iso_from_us

COLUMNS = [name for name in EVENT_COLUMNS if name != "body"]
REQUIRED = [
    "position",
    "source",
    "received_at_us",
    "event_id",
    "event_type",
    "query",
    "headers",
    "body_base64",
    "body_sha256",
    "verification",
    "duplicate_of",
    "hash",
]
CHUNK = 1000


def export_line(row: Any) -> bytes:
    """One event as its JSON line (with the trailing newline)."""
    doc = {name: getattr(row, name) for name in COLUMNS}
    doc["body_base64"] = None if row.body is None else base64.b64encode(row.body).decode()
    doc["received_at"] = iso_from_us(row.received_at_us)
    return orjson.dumps(doc) + b"\n"


def export_lines(engine: Engine, start: int = 1, stop: int | None = None) -> Iterator[bytes]:
    """Stream the log from `start` to `stop` as JSON lines, in constant memory."""
    with translated():
        for row in iter_events(engine, start, stop):
            yield export_line(row)


def _parse(number: int, line: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ImportRefused(f"line {number}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ImportRefused(f"line {number}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ImportRefused(f"line {number}: missing {', '.join(missing)}")
    body = doc.pop("body_base64")
    try:
        doc["body"] = None if body is None else base64.b64decode(body, validate=True)
    except (binascii.Error, TypeError):
        raise ImportRefused(f"line {number}: body_base64 is not base64") from None
    row = {name: doc.get(name) for name in COLUMNS}
    row["body"] = doc["body"]
    return row


def _check(number: int, row: dict[str, Any], previous: bytes, expected: int) -> bytes:
    if row["position"] != expected:
        raise ImportRefused(f"line {number}: expected position {expected}, got {row['position']}")
    if row["body"] is not None and hashlib.sha256(row["body"]).hexdigest() != row["body_sha256"]:
        raise ImportRefused(f"line {number} (position {expected}): body does not match its digest")
    try:
        record = chain.record_of(row["position"], SimpleNamespace(**row))
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise ImportRefused(f"line {number} (position {expected}): malformed field: {e}") from None
    link = chain.link(previous, record)
    if link.hex() != row["hash"]:
        raise ImportRefused(
            f"line {number}: chain broken at position {expected}: hash does not match"
        )
    return link


def import_lines(
    engine: Engine, lines: Iterable[bytes], tick: Callable[[int], None] | None = None
) -> int:
    """Load an export into an empty ledger, verifying every link and the marks outside
    the chain (`ledger.marks`); all or nothing, naming the first bad line.

    Rows go in a chunk at a time inside the one transaction, so the marks of each
    chunk are checked against the rows before it in the database, not in memory.
    Bodies the export lacks (erased there) are recorded as one erasure by "import"."""
    count = 0
    erased, first_erased, last_erased = 0, 0, 0  # the lines without a body
    with translated(), writer(engine.connect()) as conn, conn.begin():
        head, _ = read_head(conn, lock=True)
        if head != 0:
            raise ImportRefused(f"the ledger is not empty (head is position {head})")
        previous = chain.GENESIS
        batch: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        numbers: list[int] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = _parse(number, line)
                previous = _check(number, row, previous, count + 1)
            except ImportRefused:
                _check_marks(conn, batch, numbers)  # an earlier line may be the first bad one
                raise
            batch.append(row)
            counts[row["source"]] = counts.get(row["source"], 0) + 1
            numbers.append(number)
            count += 1
            if row["body"] is None:
                erased += 1
                first_erased, last_erased = first_erased or count, count
            if len(batch) >= CHUNK:
                _insert(conn, batch, numbers, tick)
        if batch:
            _insert(conn, batch, numbers, tick)
        recorder_for(conn).finish_load(conn, count, previous.hex(), counts)
        if erased:
            record_imported(conn, erased, first_erased, last_erased)
    return count


def _check_marks(conn: Connection, batch: list[dict[str, Any]], numbers: list[int]) -> None:
    bad = first_bad_mark(conn, [Mark.of_dict(row) for row in batch])
    if bad is not None:
        position, reason = bad
        number = numbers[position - batch[0]["position"]]
        raise ImportRefused(f"line {number} (position {position}): {reason}")


def _insert(
    conn: Connection,
    batch: list[dict[str, Any]],
    numbers: list[int],
    tick: Callable[[int], None] | None,
) -> None:
    """Check a chunk's marks against the rows before it, then insert it."""
    _check_marks(conn, batch, numbers)
    recorder_for(conn).load_rows(conn, batch)
    if tick is not None:
        tick(len(batch))
    batch.clear()
    numbers.clear()


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Lines of a binary stream, lazily."""
    yield from stream
