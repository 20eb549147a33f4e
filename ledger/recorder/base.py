"""The verbs every backend shares, written once; a backend supplies the rest.

`Recorder` holds what is the same SQL on SQLite and PostgreSQL (SQLAlchemy Core
reads, the numbering and chaining of an append) and names, as abstract methods and
attributes, what differs: how an append locks the head and writes its rows, how the
marks' lookups are planned, the bound-parameter marker, the row lock, the wake-up.

Duplicates: a delivery at position N is a duplicate of M, the earliest position
below N of the same source that has N's event id (when N has one) or, when N's
verifier signs only the body (`NewEvent.dedup_body`), N's body digest; that is the
smaller of the two first positions. Both lookups run in the append transaction,
after the head lock, so concurrent writers agree on M; the body digests are found
through `ledger.recorder.body_firsts`, which keeps them without an index write per
delivery. `source_counts` is kept here too, one UPSERT per batch: `GET /v1/ledger`
reads it instead of counting the log.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Row,
    Select,
    func,
    literal_column,
    select,
    update,
)

from ledger import chain
from ledger.recorder import body_firsts
from ledger.recorder.failures import translated
from ledger.recorder.records import Appended, LogFilter, NewEvent
from ledger.recorder.schema import events, ledger_head, source_counts

EVENT_COLUMNS = tuple(str(c.name) for c in events.c)  # in table order, as rows come
META_COLUMNS = [c for c in events.c if c.name not in ("headers", "body")]
# What the marks outside the chain are checked on (`ledger.marks.Mark`), in its order.
MARK_COLUMNS = ("position", "source", "event_id", "body_sha256", "verification", "duplicate_of")
# What a projector folds (`projections.model.Event`), in its order.
FOLD_COLUMNS = "position, source, event_id, event_type, received_at_us, body, duplicate_of"
# What a destination hands over: what a projector folds, and the received Content-Type.
HANDOVER_COLUMNS = f"{FOLD_COLUMNS}, content_type"
INSERT_COLUMNS = (
    "position, source, received_at_us, event_id, event_type, query, headers, body, "
    "body_sha256, content_type, remote_addr, verification, duplicate_of, hash, secret_index"
)
INSERT_BYTES = 32 * 1024 * 1024  # headers and bodies per INSERT (PostgreSQL: 1 GB a message)
ID_CHUNK = 500  # values per lookup, under the 999 bound parameters of old SQLite builds
MINUTE_US = 60_000_000

Firsts = dict[tuple[str, str], int]
HEAD_SQL = "SELECT position, hash FROM ledger_head WHERE id = 1"
# What an append batch reads of the head: its position and hash, and how far the body
# digests have been merged into body_firsts (`ledger.recorder.body_firsts`).
APPEND_HEAD_SQL = "SELECT position, hash, digests_through FROM ledger_head WHERE id = 1"
FIRST_ID_SQL = "SELECT event_id, min(position) FROM events WHERE source = {0} AND event_id "
# Only the rows before a chunk of marks: a first delivery answers nothing.
FIRST_BEFORE_SQL = (
    "SELECT event_id, min(position) FROM events WHERE position < {0} AND source = {0} AND event_id "
)
TARGETS_SQL = f"SELECT {', '.join(MARK_COLUMNS)} FROM events WHERE position "


class Listener(Protocol):
    """A background thread: started with the server, stopped with it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(slots=True)
class Wanted:
    """What a batch looks up before it is numbered: event ids and body digests, by source."""

    ids: dict[str, set[str]]
    bodies: dict[str, set[str]]  # only sources with a body-deduplicated delivery


@dataclass(slots=True)
class Head:
    """What an append found under the head lock: the head, the digest watermark, the
    first positions already in the log of the batch's ids and bodies, and this
    process's recent digests when the batch looked them up."""

    position: int
    hash: str
    watermark: int
    first_id: Firsts
    first_body: Firsts
    mine: body_firsts.Recent | None


class Recorder(ABC):
    """The one way into `events` and its side tables, for one backend.

    Every verb (VERBS) translates driver errors itself (`translated`), in a backend's
    overrides too: a caller never sees a driver's exception, only StorageUnavailable
    (retry), NotMigrated, StatementFailed or ValueRefused (wrong)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _translate_verbs(cls)

    name: str  # the SQLAlchemy dialect's name
    mark: str  # the driver's bound-parameter marker
    for_update: str  # the clause that locks a row read for the transaction ("" if none)
    single_writer: bool  # one write transaction at a time holds the whole database
    insert_rows: int  # rows per INSERT statement
    json_mark: str  # the marker of a JSON value bound as text
    arrays: bool  # binds a list as one array parameter
    copies: bool  # bulk loads go through COPY into a staging table
    snapshot_isolation: str | None  # the isolation level of a read whose view stays put

    # --- head and counts --------------------------------------------------------

    def read_head(self, conn: Connection, lock: bool = False) -> tuple[int, str]:
        """The last position and its hash (0 and 64 zeros for an empty log); `lock`
        holds the head row for the transaction where rows can be locked."""
        sql = HEAD_SQL + self.for_update if lock else HEAD_SQL
        position, head_hash = conn.exec_driver_sql(sql).one()
        return position, head_hash

    def source_counts(self, conn: Connection) -> dict[str, int]:
        """Number of events per source, as kept by every writer (no scan of the log)."""
        c = source_counts.c
        return {s: n for s, n in conn.execute(select(c.source, c.events).order_by(c.source))}

    def add_source_counts(self, conn: Connection, counts: dict[str, int]) -> None:
        """Add `counts` (events per source) to `source_counts`: for writers other than
        `append_batch` (which adds its own in its last statement), such as `import`."""
        if counts:
            tally = tuple(value for pair in counts.items() for value in pair)
            conn.exec_driver_sql(counts_sql(self.mark, len(counts)), tally)

    # --- append -----------------------------------------------------------------

    def append_batch(self, conn: Connection, batch: Sequence[NewEvent]) -> list[Appended]:
        """Append `batch` in order, chaining each row; the caller owns the transaction.

        It locks the head row, so positions are gap-free and in commit order whatever
        the number of writers or processes."""
        if not batch:
            return []
        wanted = wanted_by(batch)
        head = self.locked_head(conn, wanted)
        position, first_id, first_body, mine = (
            head.position,
            head.first_id,
            head.first_body,
            head.mine,
        )
        body_sources = wanted.bodies.keys()
        staged: body_firsts.Firsts = {}  # this batch's bodies, for `mine` once committed
        previous = bytes.fromhex(head.hash)
        rows: list[tuple] = []
        out: list[Appended] = []
        counts: dict[str, int] = {}
        for ev in batch:
            position += 1
            counts[ev.source] = counts.get(ev.source, 0) + 1
            duplicate_of = None
            if ev.event_id is not None:
                duplicate_of = first_id.setdefault((ev.source, ev.event_id), position)
                if duplicate_of == position:
                    duplicate_of = None
            if ev.source in body_sources:  # every body of the source counts as a first
                first = first_body.setdefault((ev.source, ev.body_sha256), position)
                if ev.dedup_body and first != position:
                    duplicate_of = first if duplicate_of is None else min(duplicate_of, first)
            if mine is not None:
                staged.setdefault((ev.source, ev.body_sha256), position)
            previous = chain.link(previous, chain.record_of(position, ev))
            digest = previous.hex()
            rows.append(
                (
                    position,
                    ev.source,
                    ev.received_at_us,
                    ev.event_id,
                    ev.event_type,
                    ev.query,
                    ev.headers,
                    ev.body,
                    ev.body_sha256,
                    ev.content_type,
                    ev.remote_addr,
                    ev.verification,
                    duplicate_of,
                    digest,
                    ev.secret_index,
                )
            )
            out.append(Appended(position, duplicate_of, digest))
        tally = tuple(value for pair in counts.items() for value in pair)
        self.write_rows(conn, chunked(rows, self.insert_rows), position, digest, tally)
        if mine is not None:
            mine.stage(position, digest, staged)
        if position - head.watermark >= body_firsts.MAX_LAG:  # no idle moment came: merge now
            body_firsts.merge(conn, head.watermark, head.watermark + body_firsts.MERGE_ROWS)
        return out

    @abstractmethod
    def locked_head(self, conn: Connection, wanted: Wanted) -> Head:
        """The head, locked for this transaction, and the batch's lookups."""

    @abstractmethod
    def write_rows(
        self, conn: Connection, chunks: list[list[tuple]], position: int, digest: str, tally: tuple
    ) -> None:
        """INSERT the numbered rows, move the head to (`position`, `digest`), add
        `tally` (source, events, ...) to the counts, and wake the projectors."""

    # --- reads --------------------------------------------------------------------

    def get(self, conn: Connection, position: int) -> Row | None:
        """One event with every column, or None."""
        return conn.execute(select(events).where(events.c.position == position)).first()

    def hash_at(self, conn: Connection, position: int) -> str | None:
        """The stored hash of one position, or None when it is missing."""
        return conn.execute(select(events.c.hash).where(events.c.position == position)).scalar()

    def list_events(
        self, conn: Connection, where: LogFilter, after: int = 0, limit: int = 100
    ) -> list[Row]:
        """Event metadata (no headers or body; `body_size`) after `after`, oldest first."""
        query = meta_query().where(*conditions(where), events.c.position > after)
        return list(conn.execute(query.order_by(events.c.position).limit(limit)))

    def list_newest(
        self, conn: Connection, where: LogFilter, before: int | None, limit: int
    ) -> list[Row]:
        """Event metadata below `before` (or the head), newest first."""
        query = meta_query().where(*conditions(where))
        if before is not None:
            query = query.where(events.c.position < before)
        return list(conn.execute(query.order_by(events.c.position.desc()).limit(limit)))

    def iter_events(
        self, engine: Engine, start: int = 1, stop: int | None = None, chunk: int = 256
    ) -> Iterator[Row]:
        """Every column of every event from `start` to `stop` (inclusive), in short reads.

        Memory is bounded by `chunk` rows (bodies are up to max_body_bytes each), not by
        the size of the log: export, verify and import stream through this."""
        after = start - 1
        while True:
            query = select(events).where(events.c.position > after)
            if stop is not None:
                query = query.where(events.c.position <= stop)
            with engine.connect() as conn:
                rows = list(conn.execute(query.order_by(events.c.position).limit(chunk)))
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1].position

    def deliveries(self, conn: Connection, row: Any, limit: int = 100) -> list[Row]:
        """Every other delivery with `row`'s source and event id (the original included)."""
        if row.event_id is None:
            return []
        c = events.c
        query = (
            select(c.position, c.received_at_us, c.duplicate_of, c.remote_addr)
            .where(c.source == row.source, c.event_id == row.event_id, c.position != row.position)
            .order_by(c.position)
            .limit(limit)
        )
        return list(conn.execute(query))

    def minute_counts(self, conn: Connection, first: int, minutes: int) -> Iterator[tuple]:
        """(source, minute, deliveries) of the minutes `first` to `first + minutes`
        (minutes since the epoch)."""
        c = events.c
        minute = (c.received_at_us // literal_column(str(MINUTE_US), Integer)).label("minute")
        # Bounded on both sides and grouped minute first: so both planners take the
        # received_at_us index and read only the window (grouped source first, SQLite
        # walked the (source, position) index over every event to skip a sort).
        query = (
            select(c.source, minute, func.count())
            .where(
                c.received_at_us >= first * MINUTE_US,
                c.received_at_us < (first + minutes) * MINUTE_US,
            )
            .group_by(minute, c.source)
        )
        for source, at, count in conn.execute(query):
            yield source, int(at), count

    def fold_rows(
        self,
        conn: Connection,
        after: int,
        upto: int,
        source: str | None,
        types: Sequence[str] | None,
    ) -> list[tuple]:
        """FOLD_COLUMNS of the events in (after, upto], of `source` and `types` when
        given, in position order.

        Read with a driver cursor: a rebuild reads millions of rows, and building
        SQLAlchemy rows for them cost more than the fold itself."""
        if types is not None and not types:
            return []  # wants no type at all (and PostgreSQL refuses `IN ()`)
        mark = self.mark
        sql = f"SELECT {FOLD_COLUMNS} FROM events WHERE position > {mark} AND position <= {mark}"
        params: list = [after, upto]
        if source is not None:
            sql += f" AND source = {mark}"
            params.append(source)
        if types is not None:
            sql += f" AND event_type IN ({', '.join([mark] * len(types))})"
            params.extend(types)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql + " ORDER BY position", params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def handover_rows(
        self,
        conn: Connection,
        after: int,
        upto: int,
        wanted: Handover,
        limit: int,
    ) -> list[tuple]:
        """HANDOVER_COLUMNS of at most `limit` events in (after, upto] that a destination
        wants (`wanted`), in position order.

        A prefix is matched with `substr`, not `LIKE`: SQLite's LIKE ignores case."""
        mark = self.mark
        sql = (
            f"SELECT {HANDOVER_COLUMNS} FROM events WHERE position > {mark} AND position <= {mark}"
        )
        params: list = [after, upto]
        if wanted.source is not None:
            sql += f" AND source = {mark}"
            params.append(wanted.source)
        if not wanted.duplicates:
            sql += " AND duplicate_of IS NULL"
        if wanted.types is not None or wanted.prefixes:
            alternatives = []
            if wanted.types:
                alternatives.append(f"event_type IN ({', '.join([mark] * len(wanted.types))})")
                params.extend(wanted.types)
            for prefix in wanted.prefixes:
                alternatives.append(f"substr(event_type, 1, {len(prefix)}) = {mark}")
                params.append(prefix)
            sql += f" AND ({' OR '.join(alternatives) or 'false'})"
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql + f" ORDER BY position LIMIT {int(limit)}", params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    # --- marks outside the chain ------------------------------------------------

    def first_ids_before(
        self, conn: Connection, before: int, wanted: dict[str, set[str]]
    ) -> Iterator[tuple[str, str, int]]:
        """(source, event id, first position) below `before` of the wanted ids."""
        for source, id_set in wanted.items():
            ids = sorted(id_set)
            for i in range(0, len(ids), ID_CHUNK):
                for event_id, first in self.first_ids_chunk(
                    conn, before, source, ids[i : i + ID_CHUNK]
                ):
                    yield source, event_id, first

    @abstractmethod
    def first_ids_chunk(
        self, conn: Connection, before: int, source: str, ids: list[str]
    ) -> Iterable[Sequence[Any]]:
        """(event id, first position) below `before` of up to ID_CHUNK `ids` of `source`."""

    def mark_rows(self, conn: Connection, positions: Sequence[int]) -> Iterator[Sequence[Any]]:
        """MARK_COLUMNS of the rows at `positions`."""
        for i in range(0, len(positions), ID_CHUNK):
            yield from self.mark_rows_chunk(conn, positions[i : i + ID_CHUNK])

    @abstractmethod
    def mark_rows_chunk(
        self, conn: Connection, positions: Sequence[int]
    ) -> Iterable[Sequence[Any]]:
        """MARK_COLUMNS of the rows at up to ID_CHUNK `positions`."""

    # --- erased bodies ------------------------------------------------------------

    def erased_summary(
        self,
        conn: Connection,
        erasable: Erasable,
    ) -> tuple[int, int | None, int | None]:
        """(count, first, last) of the events `erasable` names."""
        c = events.c
        query = select(func.count(), func.min(c.position), func.max(c.position))
        count, first, last = conn.execute(query.where(*erasable.where())).one()
        return count, first, last

    def erase_chunk(self, conn: Connection, erasable: Erasable, size: int) -> list[int]:
        """Erase the bodies of the first `size` events `erasable` names; their positions."""
        c = events.c
        positions = list(
            conn.execute(
                select(c.position).where(*erasable.where()).order_by(c.position).limit(size)
            ).scalars()
        )
        if positions:
            conn.execute(update(events).where(c.position.in_(positions)).values(body=None))
        return positions

    def erased_positions(self, conn: Connection, start: int) -> Iterator[int]:
        """Positions from `start` whose body was erased, in order."""
        query = select(events.c.position).where(events.c.body.is_(None), events.c.position >= start)
        yield from conn.execute(query.order_by(events.c.position)).scalars()

    # --- import -------------------------------------------------------------------

    def load_rows(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """INSERT checked rows of an import as they are (every column given)."""
        conn.execute(events.insert(), rows)

    def finish_load(
        self, conn: Connection, position: int, head_hash: str, counts: dict[str, int]
    ) -> None:
        """After an import: the head, the source counts and the body digests caught up."""
        self.add_source_counts(conn, counts)
        if position:
            conn.execute(
                update(ledger_head)
                .where(ledger_head.c.id == 1)
                .values(position=position, hash=head_hash)
            )
            body_firsts.catch_up(conn)

    # --- projection tables ------------------------------------------------------

    def delete_some(self, conn: Connection, table: str, quoted: str, size: int) -> int:
        """Delete up to `size` rows of a table about to be dropped, where DROP TABLE
        itself reads every page (0 where it does not, or the table is gone)."""
        return 0

    # --- wake-ups -----------------------------------------------------------------

    def listener(self, engine: Engine, wake: Callable[[], None]) -> Listener | None:
        """A thread (not started) calling `wake` when another process appends, or None
        where only polling (and the in-process signal) can tell."""
        return None


VERBS = (
    "read_head",
    "source_counts",
    "add_source_counts",
    "append_batch",
    "get",
    "hash_at",
    "list_events",
    "list_newest",
    "iter_events",
    "deliveries",
    "minute_counts",
    "fold_rows",
    "handover_rows",
    "first_ids_before",
    "mark_rows",
    "erased_summary",
    "erase_chunk",
    "erased_positions",
    "load_rows",
    "finish_load",
    "delete_some",
)


def _translate_verbs(cls: type) -> None:
    """Wrap the verbs `cls` defines itself in `translated()` (generators as they run)."""
    for name in VERBS:
        fn = cls.__dict__.get(name)
        if fn is not None:
            setattr(cls, name, _translating(fn))


def _translating(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generate(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with translated():
                yield from fn(*args, **kwargs)

        return generate

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with translated():
            return fn(*args, **kwargs)

    return run


_translate_verbs(Recorder)


@dataclass(frozen=True)
class Handover:
    """Which events a destination wants: `types` exactly (None: any type) or any of
    `prefixes`; duplicates only when `duplicates`."""

    source: str | None = None
    types: tuple[str, ...] | None = None
    prefixes: tuple[str, ...] = ()
    duplicates: bool = False


@dataclass(frozen=True)
class Erasable:
    """Which events erasing and its checks address (all given conditions hold)."""

    before_us: int | None = None
    source: str | None = None
    types: tuple[str, ...] | None = None
    start: int | None = None
    stop: int | None = None
    present: bool = True  # bodies still there (erase); False: already erased (checks)
    originals: bool = False  # leave duplicates out (what a projection reads)

    def where(self) -> list[ColumnElement[bool]]:
        c = events.c
        conds: list[ColumnElement[bool]] = [
            c.body.is_not(None) if self.present else c.body.is_(None)
        ]
        if self.before_us is not None:
            conds.append(c.received_at_us < self.before_us)
        if self.source is not None:
            conds.append(c.source == self.source)
        if self.types is not None:
            conds.append(c.event_type.in_(self.types))
        if self.start is not None:
            conds.append(c.position >= self.start)
        if self.stop is not None:
            conds.append(c.position <= self.stop)
        if self.originals:
            conds.append(c.duplicate_of.is_(None))
        return conds


def meta_query() -> Select:
    """SELECT of every column but headers and body, plus body_size."""
    return select(*META_COLUMNS, func.length(events.c.body).label("body_size"))


def conditions(f: LogFilter) -> list[ColumnElement[bool]]:
    c = events.c
    out: list[ColumnElement[bool]] = []
    if f.source is not None:
        out.append(c.source == f.source)
    if f.event_type is not None:
        out.append(c.event_type == f.event_type)
    if f.event_id is not None:
        out.append(c.event_id == f.event_id)
    if f.since_us is not None:
        out.append(c.received_at_us >= f.since_us)
    if f.until_us is not None:
        out.append(c.received_at_us < f.until_us)
    if f.verification is not None:
        out.append(c.verification == f.verification)
    if f.duplicates == "only":
        out.append(c.duplicate_of.is_not(None))
    elif f.duplicates == "hide":
        out.append(c.duplicate_of.is_(None))
    return out


def wanted_by(batch: Sequence[NewEvent]) -> Wanted:
    """The batch's event ids, and the digests of every body of the sources where one of
    the batch's deliveries is deduplicated by body (so the earliest of them is found)."""
    ids: dict[str, set[str]] = {}
    body_sources = set()
    for ev in batch:
        if ev.event_id is not None:
            ids.setdefault(ev.source, set()).add(ev.event_id)
        if ev.dedup_body:
            body_sources.add(ev.source)
    bodies: dict[str, set[str]] = {}
    if body_sources:
        for ev in batch:
            if ev.source in body_sources:
                bodies.setdefault(ev.source, set()).add(ev.body_sha256)
    return Wanted(ids, bodies)


def chunked(rows: list[tuple], size: int) -> list[list[tuple]]:
    """Rows in INSERT statements of at most `size` rows and about INSERT_BYTES of headers
    and bodies (PostgreSQL refuses a message over 1 GB; large bodies reach it quickly)."""
    chunks: list[list[tuple]] = [[]]
    total = 0
    for row in rows:
        weight = len(row[6]) + len(row[7])  # headers, body
        if chunks[-1] and (len(chunks[-1]) >= size or total + weight > INSERT_BYTES):
            chunks.append([])
            total = 0
        chunks[-1].append(row)
        total += weight
    return chunks


def flat(rows: list[tuple]) -> tuple:
    return tuple(value for row in rows for value in row)


@functools.cache
def insert_sql(marker: str, rows: int) -> str:
    values = "(" + ", ".join([marker] * 15) + ")"
    return f"INSERT INTO events ({INSERT_COLUMNS}) VALUES {', '.join([values] * rows)}"


@functools.cache
def counts_sql(marker: str, sources: int) -> str:
    """One UPSERT adding each of `sources` (source, events) pairs to `source_counts`."""
    values = ", ".join([f"({marker}, {marker})"] * sources)
    return (
        f"INSERT INTO source_counts (source, events) VALUES {values} ON CONFLICT (source) "
        "DO UPDATE SET events = source_counts.events + excluded.events"
    )
