"""One error shape for the whole API: {"error": code, "detail": sentence}.

Every failure is answered from the exception tree (`ledger.errors`): a HookledgerError
by its class's status, code and headers, with its message as the detail (`answer_for`).
Database errors are classified by `ledger.recorder.storage_error` wherever they surface, so a
route that reaches the database without `translated()` answers exactly as one that uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeGuard

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ledger.errors import (
    INTERNAL,
    RETRY,
    HookledgerError,
    NotMigrated,
    StatementFailed,
    StorageUnavailable,
    ValueRefused,
)
from ledger.recorder import DATABASE_ERRORS, storage_error

log = logging.getLogger("hookledger")

STORAGE_ERRORS = (StorageUnavailable, NotMigrated, StatementFailed, ValueRefused, *DATABASE_ERRORS)
UNEXPECTED = "an unexpected error occurred; see the server log"

Answer = tuple[int, str, str, Mapping[str, str] | None]  # status, code, detail, headers

# Starlette's own errors (no route, wrong method...), which are not ours to classify.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    500: INTERNAL,
    503: "unavailable",
}


class ApiError(HookledgerError):
    """An error answer whose status, machine code, sentence and headers are its own."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


class NotReady(HookledgerError):
    """/readyz: the database cannot be asked whether it is migrated."""

    status, code, headers = 503, "not_ready", RETRY


def is_answer(exc: object) -> TypeGuard[HookledgerError]:
    """Whether `exc` says how to answer it: a HookledgerError whose code is not the tree
    root's internal_error (a bug, answered like any unexpected exception)."""
    return isinstance(exc, HookledgerError) and exc.code != INTERNAL


def answer_for(exc: BaseException, where: str) -> Answer:
    """Status, code, detail and headers for any exception: the tree's answer, a database
    failure's (`storage_answer`), or 500 internal_error for a bug."""
    if isinstance(exc, STORAGE_ERRORS):
        return storage_answer(exc, where)
    if is_answer(exc):
        return _own(exc)
    return 500, INTERNAL, UNEXPECTED, None


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one JSON error body."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    """Any HookledgerError or database error, answered from the tree."""
    if not (is_answer(exc) or isinstance(exc, STORAGE_ERRORS)):
        raise exc  # a bug: `on_unexpected` answers it and the server logs its traceback
    return error_response(*answer_for(exc, f"{request.method} {request.url.path}"))


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, detail, exc.headers)


def _own(exc: HookledgerError) -> Answer:
    return exc.status, exc.code, str(exc), exc.headers


def storage_answer(exc: BaseException, where: str) -> Answer:
    """Status, code, detail and headers for a database failure, ours or a driver's.

    Away or locked: 503 with Retry-After. A refused statement (or an unclassified
    driver error) is a bug: 500 with the database's message, logged with its traceback."""
    ours = storage_error(exc) if isinstance(exc, DATABASE_ERRORS) else exc
    if not is_answer(ours) or ours.status == 500:
        log.error("%s: the database refused a statement", where, exc_info=exc)
    return _own(ours) if is_answer(ours) else (500, INTERNAL, UNEXPECTED, None)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server logs the traceback once.
    return error_response(500, INTERNAL, UNEXPECTED)


HANDLERS = {
    HookledgerError: on_error,
    HTTPException: on_http_exception,
    **dict.fromkeys(DATABASE_ERRORS, on_error),
    Exception: on_unexpected,
}
