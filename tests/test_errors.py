"""One exception tree (issue 14 item 2): every HookledgerError carries its HTTP status and
error code, the tree's docstring lists every class, and the API and the ingest path answer
a raised instance from those attributes and nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

import api.app  # noqa: F401 - loads every module that defines a HookledgerError
import ledger.errors
from api import ingest
from api.console.session import ConsoleError
from api.errors import HANDLERS, STORAGE_ERRORS, UNEXPECTED, ApiError
from ledger.errors import INTERNAL, ConfigError, HookledgerError, ImportRefused, ValueRefused
from projections.model import HandlerError
from projections.ordering import VersionError
from projections.reads import QueryError
from tests.helpers import assert_error


def _tree(cls: type[HookledgerError] = HookledgerError) -> list[type[HookledgerError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _tree(sub)
    return out


TREE = _tree()
# Their instances bring status and code (and ConsoleError a page title) of their own.
CARRIERS: dict[type[HookledgerError], Callable[[], HookledgerError]] = {
    ApiError: lambda: ApiError(418, "teapot", "short and stout", {"X-Pot": "1"}),
    ConsoleError: lambda: ConsoleError(409, "Try later", "Not now."),
}
# A bug wherever it reaches a client: 500 internal_error, the message kept for the log.
NEVER_ANSWERED = {HookledgerError, ConfigError, ImportRefused, HandlerError, VersionError}
# The same wire code for the same complaint: the request is wrong.
SHARED_CODES = {"bad_request": {ValueRefused, QueryError}}


def _instance(cls: type[HookledgerError]) -> HookledgerError:
    return CARRIERS[cls]() if cls in CARRIERS else cls(f"a {cls.__name__} message")


def test_the_tree_is_what_its_docstring_draws():
    assert len(TREE) > 10, TREE
    drawn = ledger.errors.__doc__ or ""
    for cls in TREE:
        assert cls.__name__ in drawn, (
            f"{cls.__module__}.{cls.__name__} is not in the tree's docstring"
        )


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_every_class_has_a_status_and_a_code(cls):
    error = _instance(cls)
    assert isinstance(error.status, int) and 400 <= error.status <= 599, cls
    assert isinstance(error.code, str) and error.code.isidentifier() and error.code.islower()
    assert error.headers is None or isinstance(error.headers, Mapping)
    assert error.exit_code in (1, 2)
    if cls in NEVER_ANSWERED:
        assert (error.status, error.code) == (500, INTERNAL), cls


def test_codes_name_one_class_each_except_where_the_wire_shares_them():
    owners: dict[str, set[type]] = {}
    for cls in TREE:
        if cls not in CARRIERS and cls not in NEVER_ANSWERED:
            owners.setdefault(cls.code, set()).add(cls)
    assert INTERNAL not in owners, f"{owners.get(INTERNAL)} answer as bugs: list them or code them"
    shared = {code: classes for code, classes in owners.items() if len(classes) > 1}
    assert shared == SHARED_CODES


def _raising(error: BaseException):
    async def endpoint(request):
        raise error

    return endpoint


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_the_api_and_the_ingest_path_answer_a_raised_error_by_its_class(cls, monkeypatch):
    error = _instance(cls)
    app = Starlette(routes=[Route("/x", _raising(error))], exception_handlers=HANDLERS)
    r = TestClient(app, raise_server_exceptions=False).get("/x")
    if cls in NEVER_ANSWERED:
        expected = (500, INTERNAL, UNEXPECTED, {})
    else:
        expected = (error.status, error.code, str(error), dict(error.headers or {}))
    doc = assert_error(r, expected[0], expected[1])
    assert doc["detail"] == expected[2]
    assert {k: r.headers.get(k) for k in expected[3]} == expected[3]

    async def _ingest(*args):
        raise error

    monkeypatch.setattr(ingest, "_ingest", _ingest)
    hl = SimpleNamespace(config=SimpleNamespace(sources={}), metrics=SimpleNamespace())
    hl.metrics.delivered = lambda *args: None
    status, body, headers, outcome = asyncio.run(ingest.answer(hl, {}, None, "app"))
    assert (status, body) == (r.status_code, r.content)
    sent = {k.decode(): v.decode() for k, v in headers}
    assert {k.lower(): v for k, v in expected[3].items()}.items() <= sent.items()
    if isinstance(error, STORAGE_ERRORS):  # counted as outages or errors, not by code
        assert outcome == ("unavailable" if error.status == 503 else "error")
    else:
        assert outcome == ("error" if cls in NEVER_ANSWERED else error.code)


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_only_bugs_are_logged_with_a_traceback(cls, caplog):
    error = _instance(cls)
    app = Starlette(routes=[Route("/x", _raising(error))], exception_handlers=HANDLERS)
    with caplog.at_level(logging.ERROR, "hookledger"):
        TestClient(app, raise_server_exceptions=False).get("/x")
    logged = any(rec.exc_info for rec in caplog.records if rec.name == "hookledger")
    assert logged == (error.status == 500 and cls not in NEVER_ANSWERED), cls
