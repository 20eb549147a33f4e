"""The console's reads of the log: filtered pages newest first, deliveries of one event id,
and the handler errors recorded at a position. Every value is a bound parameter."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

from sqlalchemy import Connection, Row, select

from api.console.session import ConsoleError
from ledger.recorder import LogFilter, recorder_for
from ledger.timefmt import iso_from_us, us_from_iso
from projections.schema import projection_errors

T = TypeVar("T")
MAX_PAGE = 500
DEFAULT_PAGE = 50
_LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$")


def _instant(name: str, raw: str) -> int | None:
    if not raw:
        return None
    try:
        return us_from_iso(raw)
    except (ValueError, OverflowError):
        raise ConsoleError(
            400, "Bad filter", f"{name} must be a time such as 2026-11-28T05:00 (UTC)"
        ) from None


def input_time(us: int | None) -> str:
    """A time as a datetime-local input shows it (UTC, to the second)."""
    return "" if us is None else iso_from_us(us)[:19]


@dataclass(frozen=True)
class EventFilter:
    """The log page's filters, as typed in its form (every field optional)."""

    source: str = ""
    type: str = ""
    since: str = ""
    until: str = ""
    verification: str = ""  # "", "verified", "unverified"
    duplicates: str = ""  # "", "only", "hide"

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> EventFilter:
        values = {f.name: params.get(f.name, "").strip() for f in fields(cls)}
        if values["verification"] not in ("", "verified", "unverified"):
            raise ConsoleError(400, "Bad filter", "verification is verified or unverified")
        if values["duplicates"] not in ("", "only", "hide"):
            raise ConsoleError(400, "Bad filter", "duplicates is only or hide")
        for name in ("since", "until"):
            us = _instant(name, values[name])
            if us is not None and not _LOCAL_TIME.match(values[name]):
                values[name] = input_time(us)  # show RFC 3339 input in the form's own format
        return cls(**values)

    def params(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def log_filter(self) -> LogFilter:
        """What the recorder selects on for these filters."""
        return LogFilter(
            source=self.source or None,
            event_type=self.type or None,
            since_us=_instant("since", self.since),
            until_us=_instant("until", self.until),
            verification=self.verification or None,
            duplicates=self.duplicates or None,
        )


@dataclass
class Page:
    rows: list[Row]
    older: int | None  # `before` cursor of the next older page
    newer: int | None  # `after` cursor of the next newer page


def page_of_events(
    conn: Connection, f: EventFilter, before: int | None, after: int | None, limit: int
) -> Page:
    """Newest first; `before` pages back in time, `after` pages forward."""
    log = recorder_for(conn)
    where = f.log_filter()
    if after is not None:
        found = log.list_events(conn, where, after, limit + 1)
        more_newer = len(found) > limit
        rows = list(reversed(found[:limit]))
        older = rows[-1].position if rows else None
        return Page(rows, older, rows[0].position if rows and more_newer else None)
    found = log.list_newest(conn, where, before, limit + 1)
    rows = found[:limit]
    older = rows[-1].position if len(found) > limit else None
    newer = rows[0].position if rows and before is not None else None
    return Page(rows, older, newer)


def events_after(conn: Connection, f: EventFilter, after: int, limit: int = 200) -> list[Row]:
    """The live tail: matching events above `after`, newest first."""
    return list(reversed(recorder_for(conn).list_events(conn, f.log_filter(), after, limit)))


def deliveries(conn: Connection, row: Row, limit: int = 100) -> list[Row]:
    """Every other delivery with the same source and event id (the original included)."""
    return recorder_for(conn).deliveries(conn, row, limit)


def errors_at(conn: Connection, position: int) -> dict[str, Row]:
    """The latest handler error each projection recorded at `position`."""
    e = projection_errors.c
    query = select(projection_errors).where(e.position == position).order_by(e.id)
    return {r.name: r for r in conn.execute(query)}
