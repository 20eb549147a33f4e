"""One error shape for the whole API: {"error": code, "detail": sentence}.

Every failure is mapped here, by exception class, in one place.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ledger.errors import NotMigrated, StorageUnavailable

RETRY_AFTER_SECONDS = "2"

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
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
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


async def on_storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(
        503, "storage_unavailable", str(exc), {"Retry-After": RETRY_AFTER_SECONDS}
    )


async def on_not_migrated(request: Request, exc: Exception) -> JSONResponse:
    return error_response(503, "not_migrated", str(exc), {"Retry-After": RETRY_AFTER_SECONDS})


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server logs the traceback once.
    return error_response(500, "internal_error", "an unexpected error occurred; see the server log")


HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    StorageUnavailable: on_storage_unavailable,
    NotMigrated: on_not_migrated,
    Exception: on_unexpected,
}
