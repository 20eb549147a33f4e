"""A destination's durable state: its checkpoint, the window above it, attempts, dead
letters, and the operator's actions on them.

Every write is one short transaction. The holder's writes are a compare-and-set on
(position, generation): taking a destination over and every operator action move the
generation, so whatever an older holder or an older plan still writes is refused
(its attempts are kept: they happened).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, select, update
from sqlalchemy import exc as sa_exc

from destinations.plan import Item, Journal, Saved, key_of
from destinations.spec import Destination
from ledger.errors import HookledgerError
from ledger.recorder import Handover, get_event, read_head, recorder_for, writer
from ledger.timefmt import iso_from_us
from projections.model import Event
from projections.schema import dead_letters, delivery_attempts, destination_window, destinations
from projections.versions import now_us

D, W, A, DL = destinations, destination_window, delivery_attempts, dead_letters
READ_BATCH = 500


class DestinationRefused(HookledgerError):
    """Raised when an operator's action does not fit the destination's state."""

    status, code = 409, "destination_state"


# --- the holder's side ----------------------------------------------------------------


def first_position(conn: Connection, spec: Destination) -> int:
    """Where a destination first seen starts: `start` = head, beginning, or a position."""
    if spec.start == "beginning":
        return 0
    if isinstance(spec.start, int):
        return spec.start - 1
    return read_head(conn)[0]


def ensure(engine: Engine, spec: Destination) -> None:
    """Create the destination's row when it is first seen (several workers may race)."""
    with writer(engine.connect()) as conn:
        try:
            with conn.begin():
                if conn.execute(select(D.c.name).where(D.c.name == spec.name)).first():
                    return
                conn.execute(
                    D.insert().values(
                        name=spec.name,
                        kind=spec.kind,
                        position=first_position(conn, spec),
                        state="live",
                        generation=0,
                        created_at_us=now_us(),
                    )
                )
        except sa_exc.IntegrityError:
            return  # another worker created it at the same moment


def take_over(engine: Engine, name: str) -> Saved:
    """Move the generation (refusing what the previous holder still writes) and read
    the state a plan starts from."""
    with writer(engine.connect()) as conn, conn.begin():
        conn.execute(update(D).where(D.c.name == name).values(generation=D.c.generation + 1))
        return saved(conn, name)


def saved(conn: Connection, name: str) -> Saved:
    row = conn.execute(select(D).where(D.c.name == name)).one()
    done, redeliver, windowed = set(), set(), set()
    retrying: dict[int, tuple[int, int | None]] = {}
    for w in conn.execute(select(W).where(W.c.name == name)):
        if w.state == "redeliver":
            redeliver.add(w.position)
        elif w.position <= row.position:
            continue
        elif w.state == "done":
            done.add(w.position)
            windowed.add(w.position)
        else:
            retrying[w.position] = (w.attempts, w.next_at_us)
            windowed.add(w.position)
    # Handed over ahead of the checkpoint, in this round (since the last replay): the
    # attempts say so, written in the same transaction as the checkpoint each time.
    done.update(
        conn.execute(
            select(A.c.position)
            .where(
                A.c.destination == name,
                A.c.position > row.position,
                A.c.generation >= row.round_generation,
                A.c.outcome == "delivered",
            )
            .distinct()
        ).scalars()
    )
    return Saved(
        position=row.position,
        state=row.state,
        generation=row.generation,
        notices=row.notices,
        failed_position=row.failed_position,
        done=frozenset(done),
        windowed=frozenset(windowed),
        retrying=retrying,
        redeliver=frozenset(redeliver),
    )


def marks_of(conn: Connection, name: str) -> Row | None:
    """(generation, notices, state): what the holder compares with its plan each pass."""
    return conn.execute(
        select(D.c.generation, D.c.notices, D.c.state).where(D.c.name == name)
    ).first()


def redeliveries(conn: Connection, name: str) -> list[int]:
    return list(
        conn.execute(
            select(W.c.position).where(W.c.name == name, W.c.state == "redeliver")
        ).scalars()
    )


def wanted(spec: Destination) -> Handover:
    return Handover(
        source=spec.source,
        types=None if spec.types is None else spec.exact_types,
        prefixes=spec.type_prefixes,
        duplicates=spec.include_duplicates,
    )


def item_of(spec: Destination, row: Sequence[Any]) -> Item:
    event = Event(*row[:7])
    return Item(event, row[7], key_of(spec, event))


def read(conn: Connection, spec: Destination, after: int, upto: int, limit: int) -> list[Item]:
    """Up to `limit` wanted events in (after, upto], in position order."""
    rows = recorder_for(conn).handover_rows(conn, after, upto, wanted(spec), limit)
    return [item_of(spec, row) for row in rows]


def read_one(conn: Connection, spec: Destination, position: int) -> Item | None:
    """One event, wanted or not (an operator's redelivery)."""
    row = get_event(conn, position)
    if row is None:
        return None
    fields = (
        row.position,
        row.source,
        row.event_id,
        row.event_type,
        row.received_at_us,
        row.body,
        row.duplicate_of,
        row.content_type,
    )
    return item_of(spec, fields)


def flush(
    engine: Engine, name: str, generation: int, expected: int, journal: Journal, target: int
) -> bool:
    """Write a plan's journal and move the checkpoint from `expected` to `target`, in one
    transaction; False when the generation or the checkpoint moved (another holder, an
    operator): then only the attempts and their counts are written."""
    counts = journal.counts
    counted = {
        "delivered": D.c.delivered + counts["delivered"],
        "failed": D.c.failed + counts["failed"],
        "dead": D.c.dead + counts["dead"],
    }
    with writer(engine.connect()) as conn, conn.begin():
        if journal.attempts:
            conn.execute(A.insert(), journal.attempts)
        values: dict[str, Any] = {"position": target, **counted}
        if journal.state is not None:
            values["state"], values["reason"], values["failed_position"] = journal.state
        moved = conn.execute(
            update(D)
            .where(D.c.name == name, D.c.generation == generation, D.c.position == expected)
            .values(**values)
        )
        if moved.rowcount != 1:
            conn.execute(update(D).where(D.c.name == name).values(**counted))
            return False
        if journal.clear_below:
            conn.execute(
                delete(W).where(W.c.name == name, W.c.position <= target, W.c.state != "redeliver")
            )
        if journal.dropped:
            conn.execute(
                delete(W).where(
                    W.c.name == name, W.c.state == "redeliver", W.c.position.in_(journal.dropped)
                )
            )
        _write_window(conn, name, journal.window)
        for position in journal.dead:
            _dead_letter(conn, name, position)
    return True


def _write_window(conn: Connection, name: str, window: dict[int, tuple[str, int, int | None]]):
    if not window:
        return
    positions = list(window)
    for i in range(0, len(positions), 500):
        chunk = positions[i : i + 500]
        conn.execute(
            delete(W).where(W.c.name == name, W.c.position.in_(chunk), W.c.state != "redeliver")
        )
    conn.execute(
        W.insert(),
        [
            {"name": name, "position": p, "state": s, "attempts": a, "next_at_us": n}
            for p, (s, a, n) in window.items()
        ],
    )


def _dead_letter(conn: Connection, name: str, position: int) -> None:
    last = conn.execute(
        select(func.max(A.c.id)).where(A.c.destination == name, A.c.position == position)
    ).scalar()
    conn.execute(delete(DL).where(DL.c.destination == name, DL.c.position == position))
    conn.execute(
        DL.insert().values(destination=name, position=position, at_us=now_us(), attempt_id=last)
    )


# --- the operator's side ----------------------------------------------------------------


def _row(conn: Connection, name: str) -> Row:
    row = conn.execute(select(D).where(D.c.name == name)).first()
    if row is None:
        raise DestinationRefused(
            f"destination {name!r} has not started yet: run `hookledger serve` or `project` once"
        )
    return row


def _act(engine: Engine, name: str, change, fence: bool = True) -> None:
    """One operator action in one transaction. One that moves the checkpoint or the
    window (`fence`) moves the generation too, refusing the holder's older plan; the
    others move `notices`, which the holder takes in without starting over."""
    moved = {"generation": D.c.generation + 1} if fence else {"notices": D.c.notices + 1}
    with writer(engine.connect()) as conn, conn.begin():
        row = _row(conn, name)
        values = change(conn, row) or {}
        conn.execute(update(D).where(D.c.name == name).values(**moved, **values))


def pause(engine: Engine, name: str) -> None:
    def change(conn, row):
        if row.state == "failed":
            raise DestinationRefused(f"{name} has failed: `retry` or `skip` its dead event first")
        return {"state": "paused", "reason": "paused by an operator"}

    _act(engine, name, change, fence=False)


def resume(engine: Engine, name: str) -> None:
    def change(conn, row):
        if row.state == "failed":
            raise DestinationRefused(
                f"{name} has failed at position {row.failed_position}: `retry` attempts that "
                "event again, `skip` records it as dead and goes on"
            )
        return {"state": "live", "reason": None}

    _act(engine, name, change, fence=False)


def retry(engine: Engine, name: str) -> None:
    """Attempt a failed destination's dead event again, at once, with a new round."""

    def change(conn, row):
        position = _not_failed_refused(name, row, "retry")
        _write_window(conn, name, {position: ("retrying", 0, None)})
        return {"state": "live", "reason": None, "failed_position": None}

    _act(engine, name, change)


def skip(engine: Engine, name: str) -> None:
    """Record a failed destination's dead event among the dead letters and go on."""

    def change(conn, row):
        position = _not_failed_refused(name, row, "skip")
        _dead_letter(conn, name, position)
        _write_window(conn, name, {position: ("done", 0, None)})
        return {"state": "live", "reason": None, "failed_position": None, "dead": D.c.dead + 1}

    _act(engine, name, change)


def _not_failed_refused(name: str, row: Row, verb: str) -> int:
    if row.state != "failed" or row.failed_position is None:
        raise DestinationRefused(f"{name} has not failed (it is {row.state}): nothing to {verb}")
    return int(row.failed_position)


def replay(engine: Engine, name: str, start: int) -> None:
    """Hand over again every wanted event from `start` on, in order (new attempts, the
    same webhook-ids): the checkpoint moves back to `start - 1`."""
    if start < 1:
        raise DestinationRefused(f"a replay starts at a position of at least 1, not {start}")

    def change(conn, row):
        head = read_head(conn)[0]
        if start > head + 1:
            raise DestinationRefused(f"position {start} is past the head of the log ({head})")
        conn.execute(delete(W).where(W.c.name == name, W.c.state != "redeliver"))
        # a new round: attempts of older plans (some may still finish) count for nothing
        values: dict[str, Any] = {"position": start - 1, "round_generation": row.generation + 1}
        if row.state == "failed":
            values.update(state="live", reason=None, failed_position=None)
        return values

    _act(engine, name, change)


def redeliver(engine: Engine, name: str, position: int) -> None:
    """Hand one event over once more, outside the order."""

    def change(conn, row):
        head = read_head(conn)[0]
        if not 1 <= position <= head:
            raise DestinationRefused(f"there is no event at position {position} (head {head})")
        conn.execute(
            delete(W).where(W.c.name == name, W.c.position == position, W.c.state == "redeliver")
        )
        conn.execute(W.insert().values(name=name, position=position, state="redeliver", attempts=0))

    _act(engine, name, change, fence=False)


# --- what an operator sees ----------------------------------------------------------------


def attempt_doc(row: Any) -> dict[str, Any]:
    return {
        "position": row.position,
        "attempt": row.attempt,
        "started_at": iso_from_us(row.started_at_us),
        "outcome": row.outcome,
        "status": row.status,
        "error": row.error,
        "duration_ms": round(row.duration_us / 1000, 3),
        "response": row.response,
    }


def describe(conn: Connection, spec: Destination, head: int) -> dict[str, Any]:
    """One destination's entry (the shape of GET /v1/destinations)."""
    row = conn.execute(select(D).where(D.c.name == spec.name)).first()
    last = conn.execute(
        select(A).where(A.c.destination == spec.name).order_by(A.c.id.desc()).limit(1)
    ).first()
    retrying = 0
    if row is not None:
        retrying = (
            conn.execute(
                select(func.count())
                .select_from(W)
                .where(W.c.name == spec.name, W.c.state == "retrying", W.c.position > row.position)
            ).scalar()
            or 0
        )
    position = row.position if row is not None else None
    return {
        "name": spec.name,
        "kind": spec.kind,
        "target": spec.url if spec.url is not None else spec.handler,
        "order": spec.order,
        "state": row.state if row is not None else "starting",
        "reason": _reason(spec, row),
        "configured": spec.configured,
        "position": position,
        "head": head,
        "lag": None if position is None else max(head - position, 0),
        "in_flight": retrying,
        "failed_position": row.failed_position if row is not None else None,
        "delivered": row.delivered if row is not None else 0,
        "failed": row.failed if row is not None else 0,
        "dead": row.dead if row is not None else 0,
        "last_attempt": None if last is None else attempt_doc(last),
    }


def _reason(spec: Destination, row: Row | None) -> str | None:
    if not spec.configured:
        return f"{spec.secret_env} is unset: nothing is sent until it is (and the workers restart)"
    if row is None:
        return "no worker has started it yet"
    return row.reason


def status(engine: Engine, specs: dict[str, Destination]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        head = read_head(conn)[0]
        return [describe(conn, spec, head) for spec in specs.values()]


def attempts(
    conn: Connection, name: str, position: int | None, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Attempts newest first (below the attempt id `before`), and the next cursor."""
    query = select(A).where(A.c.destination == name)
    if position is not None:
        query = query.where(A.c.position == position)
    if before is not None:
        query = query.where(A.c.id < before)
    rows = list(conn.execute(query.order_by(A.c.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return [attempt_doc(r) for r in rows], (rows[-1].id if more else None)


def dead(conn: Connection, name: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The dead letters, newest first, each with its last attempt."""
    letters = list(
        conn.execute(
            select(DL).where(DL.c.destination == name).order_by(DL.c.at_us.desc()).limit(limit)
        )
    )
    ids = [d.attempt_id for d in letters if d.attempt_id is not None]
    last = {a.id: a for a in conn.execute(select(A).where(A.c.id.in_(ids)))} if ids else {}
    return [
        {
            "position": d.position,
            "at": iso_from_us(d.at_us),
            "last_attempt": attempt_doc(last[d.attempt_id]) if d.attempt_id in last else None,
        }
        for d in letters
    ]
