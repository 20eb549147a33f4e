"""What the engine hands a projection: events, read from the log, with a lazily parsed body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.errors import HookledgerError

NOT_JSON = object()


@dataclass(slots=True)
class Event:
    """One logged delivery as a projection sees it."""

    position: int
    source: str
    event_id: str | None
    event_type: str | None
    received_at_us: int
    body: bytes | None
    duplicate_of: int | None = None
    _doc: Any = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    def json(self) -> Any:
        """The body parsed as JSON; NOT_JSON when it is not (or was erased)."""
        if not self._parsed:
            self._parsed = True
            try:
                self._doc = NOT_JSON if self.body is None else orjson.loads(self.body)
            except orjson.JSONDecodeError:
                self._doc = NOT_JSON
        return self._doc


class HandlerError(HookledgerError):
    """An event a projection cannot apply; recorded in projection_errors, never answered."""
