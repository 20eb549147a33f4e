"""The log page (`/ui/`): newest first, filters, cursor paging, the JSON the live tail
polls for new rows (`/ui/tail`), and the chart of deliveries per minute and per source
over the last 24 hours, drawn as SVG on the server from one GROUP BY over the last day
(the `received_at_us` index bounds it)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.console import chain, log_filter
from api.console.session import ConsoleError, require
from api.console.templating import ENV, SECURITY_HEADERS, base, render
from api.services import services_of, with_connection
from ledger.recorder import read_head, recorder_for
from ledger.recorder.base import MINUTE_US
from ledger.timefmt import iso_from_us

TAIL_ROWS = 200
MINUTES = 24 * 60
WIDTH, HEIGHT = MINUTES, 100  # one SVG unit per minute; the plot stretches to its box
COLORS = 8  # CSS classes c0..c7
TICKS = 4  # labels every 6 hours


@dataclass(frozen=True)
class Series:
    source: str
    color: int
    points: str  # SVG polyline points
    total: int
    peak: int


@dataclass(frozen=True)
class Chart:
    series: list[Series]
    peak: int
    total: int
    ticks: list[str]  # HH:MM UTC labels from 24 h ago to now
    gridlines: list[int]  # x of each inner tick
    width: int = WIDTH
    height: int = HEIGHT


def minute_counts(conn: Connection, now_us: int) -> tuple[int, dict[str, dict[int, int]]]:
    """(first minute, {source: {minute offset 0..1439: deliveries}})."""
    first = now_us // MINUTE_US - (MINUTES - 1)
    out: dict[str, dict[int, int]] = {}
    for source, at, count in recorder_for(conn).minute_counts(conn, first, MINUTES):
        offset = at - first
        if 0 <= offset < MINUTES:
            out.setdefault(source, {})[offset] = count
    return first, out


def _polyline(counts: dict[int, int], peak: int) -> str:
    """Points of one series, with the interior points of flat runs dropped."""
    ys = [HEIGHT - 96.0 * counts.get(i, 0) / peak - 2 for i in range(MINUTES)]
    points: list[tuple[int, float]] = []
    for i, y in enumerate(ys):
        flat = 0 < i < MINUTES - 1 and ys[i - 1] == y == ys[i + 1]
        if not flat:
            points.append((i, y))
    return " ".join(f"{x},{y:.1f}" for x, y in points)


def build_chart(first_minute: int, counts: dict[str, dict[int, int]], known: list[str]) -> Chart:
    """The chart of `counts`; colours follow the order of `known` sources, then the rest."""
    order = list(dict.fromkeys([*known, *sorted(counts)]))
    peak = max((max(c.values()) for c in counts.values() if c), default=0)
    series = [
        Series(
            source,
            order.index(source) % COLORS,
            _polyline(c, max(peak, 1)),
            sum(c.values()),
            max(c.values()),
        )
        for source, c in sorted(counts.items())
    ]
    step = MINUTES // TICKS
    ticks = [iso_from_us((first_minute + i * step) * MINUTE_US)[11:16] for i in range(TICKS)] + [
        "now"
    ]
    return Chart(
        series,
        peak,
        sum(s.total for s in series),
        ticks,
        [i * step for i in range(1, TICKS)],
    )


def load_chart(conn: Connection, known: list[str], now_us: int | None = None) -> Chart:
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    first, counts = minute_counts(conn, now_us)
    return build_chart(first, counts, known)


def _position(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "")
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ConsoleError(400, "Bad cursor", f"{name} must be a position, got {raw!r}")
    return int(raw)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "")
    if not raw:
        return log_filter.DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= log_filter.MAX_PAGE:
        raise ConsoleError(400, "Bad limit", f"limit must be between 1 and {log_filter.MAX_PAGE}")
    return int(raw)


async def log_page(request: Request) -> Response:
    require(request, "read")
    filters = log_filter.EventFilter.parse(request.query_params)
    before, after = _position(request, "before"), _position(request, "after")
    limit = _limit(request)
    hl = services_of(request)
    configured = list(hl.config.sources)

    def read(conn):
        head, head_hash = read_head(conn)
        page = log_filter.page_of_events(conn, filters, before, after, limit)
        return head, head_hash, page, load_chart(conn, configured)

    head, head_hash, page, drawn = await with_connection(request, read)
    newest = page.rows[0].position if page.rows else 0
    return render(
        request,
        "log.html",
        {
            "filters": filters,
            "page": page,
            "limit": limit if limit != log_filter.DEFAULT_PAGE else None,
            "head": head,
            "head_hash": head_hash,
            "chart": drawn,
            "sources": list(dict.fromkeys([*configured, *(s.source for s in drawn.series)])),
            "first_page": before is None and after is None,
            "tail_after": max(head, newest),
            "verify": await chain.last_check(request),
        },
    )


async def tail(request: Request) -> Response:
    """New rows above `after` that match the page's filters, as server-escaped HTML."""
    require(request, "read")
    filters = log_filter.EventFilter.parse(request.query_params)
    after = _position(request, "after") or 0
    rows = await with_connection(request, log_filter.events_after, filters, after, TAIL_ROWS)
    html = ENV.get_template("_event_rows.html").render(ui=base(request), rows=rows, fresh=True)
    last = rows[0].position if rows else after
    return JSONResponse(
        {"html": html if rows else "", "count": len(rows), "last": last},
        headers=SECURITY_HEADERS,
    )
