"""The chain status (`/ui/chain`): head, head hash, the last verification and a button
that re-verifies the whole chain in a background thread, with its progress.

The last result lives in memory on the app state: it is this process's own
check, and a restart forgets it (run `hookledger verify` for a durable answer).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.console import queries
from api.console.session import checked_form, require
from api.console.templating import SECURITY_HEADERS, redirect, render
from ledger.store import read_head
from ledger.verify import verify_ledger

log = logging.getLogger("hookledger.console")


class VerifyRun:
    """One verification at a time per process, and the outcome of the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = False
        self.started_us: int | None = None
        self.finished_us: int | None = None
        self.checked = 0
        self.total = 0
        self.result: dict[str, Any] | None = None
        self.by: str | None = None

    def start(self, engine: Engine, head: int, by: str | None) -> bool:
        """Begin verifying in a thread; False when one is already running."""
        with self._lock:
            if self.running:
                return False
            self.running, self.checked, self.total, self.by = True, 0, head, by
            self.started_us = time.time_ns() // 1000
        threading.Thread(
            target=self._run, args=(engine,), name="hookledger-console-verify", daemon=True
        ).start()
        return True

    def _tick(self, n: int) -> None:
        self.checked += n

    def _run(self, engine: Engine) -> None:
        try:
            result = verify_ledger(engine, 1, self._tick).as_dict()
        except Exception as e:  # storage trouble: report it as the outcome
            log.warning("console verification failed: %s", e)
            result = {"ok": False, "checked": self.checked, "error": str(e)}
        with self._lock:
            self.result = result
            self.finished_us = time.time_ns() // 1000
            self.running = False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            total = max(self.total, 1)
            return {
                "running": self.running,
                "checked": self.checked,
                "total": self.total,
                "percent": round(100.0 * min(self.checked, total) / total, 1),
                "started_us": self.started_us,
                "finished_us": self.finished_us,
                "result": self.result,
                "by": self.by,
            }


def _verify_state(request: Request) -> VerifyRun:
    return request.app.state.console.verify


async def page(request: Request) -> Response:
    require(request, "read")
    head, head_hash = await queries.run(request, read_head)
    return render(
        request,
        "chain.html",
        {"head": head, "head_hash": head_hash, "verify": _verify_state(request).snapshot()},
    )


async def status_json(request: Request) -> Response:
    require(request, "read")
    return JSONResponse(_verify_state(request).snapshot(), headers=SECURITY_HEADERS)


async def verify(request: Request) -> Response:
    """Start verifying the chain from position 1 (admin); the page shows the progress."""
    principal, _ = await checked_form(request, "admin")
    head, _ = await queries.run(request, read_head)
    _verify_state(request).start(request.app.state.hl.engine, head, principal.name)
    return redirect(request, "/chain")
