"""The chain status (`/ui/chain`): head, head hash, the last verification and a button
that verifies the whole chain, with its progress.

Verifications are the jobs of `ledger.verify_job`, kept in the database: the page shows
the same running job and last result as `GET /v1/ledger/verify` and `hookledger
verify`, whichever process or worker ran it, and a restart forgets nothing.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.console.session import checked_form, require
from api.console.templating import SECURITY_HEADERS, redirect, render
from api.services import services_of, with_connection
from ledger import verify_job
from ledger.recorder import read_head


def snapshot(job: verify_job.Job | None) -> dict[str, Any]:
    """What the pages and `/ui/chain.json` show of the running or last verification."""
    if job is None:  # never verified: the same keys, empty
        return {
            "running": False,
            "checked": 0,
            "total": 0,
            "percent": 0.0,
            "state": None,
            "from": None,
            "head": None,
            "started_us": None,
            "finished_us": None,
            "result": None,
            "by": None,
        }
    doc = job.doc()
    return {
        "running": job.running,
        "checked": job.checked,
        "total": job.total,
        "percent": doc.get("percent", 100.0),
        "state": job.state,
        "from": job.start,
        "head": job.head,
        "started_us": job.started_at_us,
        "finished_us": job.finished_at_us,
        "result": None if job.running else job.result,
        "by": job.requested_by,
    }


async def last_check(request: Request) -> dict[str, Any]:
    """The snapshot of the running or last verification, read from the database."""
    return snapshot(await with_connection(request, verify_job.latest))


async def page(request: Request) -> Response:
    require(request, "read")
    head, head_hash = await with_connection(request, read_head)
    return render(
        request,
        "chain.html",
        {"head": head, "head_hash": head_hash, "verify": await last_check(request)},
    )


async def status_json(request: Request) -> Response:
    require(request, "read")
    return JSONResponse(await last_check(request), headers=SECURITY_HEADERS)


async def verify(request: Request) -> Response:
    """Verify the chain from position 1 (admin), or join the running verification; the
    page shows the progress."""
    principal, _ = await checked_form(request, "admin")
    engine = services_of(request).engine
    job, started = await run_in_threadpool(verify_job.claim, engine, 1, principal.name)
    if started:
        verify_job.run_in_background(engine, job)
    return redirect(request, "/chain")
