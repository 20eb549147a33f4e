"""One error shape for the whole API: {"error": code, "detail": sentence}.

Every failure is mapped here, by exception class, in one place. Database errors
are classified by `ledger.recorder.storage_error` wherever they surface, so a route that
reaches the database without `translated()` answers exactly as one that uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ledger.errors import NotMigrated, StatementFailed, StorageUnavailable, ValueRefused
from ledger.recorder import DATABASE_ERRORS, storage_error

log = logging.getLogger("hookledger")

RETRY_AFTER_SECONDS = "2"
STORAGE_ERRORS = (StorageUnavailable, NotMigrated, StatementFailed, ValueRefused, *DATABASE_ERRORS)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: HTTP status, machine code, human sentence."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one JSON error body."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, detail, exc.headers)


def storage_answer(exc: BaseException, where: str) -> tuple[int, str, str, dict[str, str] | None]:
    """Status, code, detail and headers for a database failure, ours or a driver's.

    Away or locked: 503 with Retry-After. A refused statement (or an unclassified
    driver error) is a bug: 500 with the database's message, logged with its traceback."""
    ours = storage_error(exc) if isinstance(exc, DATABASE_ERRORS) else exc
    retry = {"Retry-After": RETRY_AFTER_SECONDS}
    if isinstance(ours, StorageUnavailable):
        return 503, "storage_unavailable", str(ours), retry
    if isinstance(ours, NotMigrated):
        return 503, "not_migrated", str(ours), retry
    if isinstance(ours, ValueRefused):
        return 400, "bad_request", str(ours), None
    log.error("%s: the database refused a statement", where, exc_info=exc)
    if isinstance(ours, StatementFailed):
        return 500, "database_error", str(ours), None
    return 500, "internal_error", "an unexpected error occurred; see the server log", None


async def on_storage_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(*storage_answer(exc, f"{request.method} {request.url.path}"))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server logs the traceback once.
    return error_response(500, "internal_error", "an unexpected error occurred; see the server log")


HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    **dict.fromkeys(STORAGE_ERRORS, on_storage_error),
    Exception: on_unexpected,
}
