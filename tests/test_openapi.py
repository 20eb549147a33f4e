"""The OpenAPI document covers every route, and the server's answers match it (schemathesis)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import ROUTES
from api.openapi import DOCUMENT
from tests.conftest import ServerProcess, write_config
from tests.projection_support import entities_toml

CONFIG = (
    'database_url = "sqlite:///DIR/ledger.db"\n'
    + entities_toml('{ name = "/data/name", age = { path = "/data/age", type = "integer" } }')
    # a destination nothing answers for: its routes are exercised with a real one
    + '\n[destinations.hook]\nurl = "http://127.0.0.1:9/hooks"\nstart = "beginning"\n'
)


def test_every_route_is_documented_with_its_methods():
    documented = {
        (path, method.upper()) for path, ops in DOCUMENT["paths"].items() for method in ops
    }
    served = set()
    for route in ROUTES:
        path = route.path.replace(":path}", "}")
        for method in route.methods - {"HEAD"}:
            served.add((path, method))
    assert served == documented


def test_the_guards_answers_are_documented():
    for path, operations in DOCUMENT["paths"].items():
        for method, op in operations.items():
            assert "misdirected_host" in op["responses"]["421"]["description"], (path, method)
            forbidden = op["responses"].get("403", {}).get("description", "")
            checked = method != "get" and not path.startswith("/hooks/")
            assert ("cross_origin" in forbidden) == checked, (path, method)
    verify = DOCUMENT["paths"]["/v1/ledger/verify"]["post"]["responses"]["403"]["description"]
    assert "lacks the scope" in verify and "cross_origin" in verify
    assert "403" not in DOCUMENT["paths"]["/hooks/{source}"]["post"]["responses"]
    assert DOCUMENT["paths"]["/v1/events"]["get"]["responses"]["403"]["description"] == (
        "token lacks the scope"
    )


def test_the_rejections_reason_filter_is_documented():
    from ledger.recorder.rejections import REASONS

    params = DOCUMENT["paths"]["/v1/rejections"]["get"]["parameters"]
    (reason,) = [p for p in params if p["name"] == "reason"]
    assert reason["in"] == "query" and reason["schema"]["enum"] == list(REASONS)


def test_the_document_is_served(make_client):
    client = make_client("")
    assert client.get("/openapi.json").json() == DOCUMENT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("openapi")
    path = write_config(directory / "hookledger.toml", CONFIG.replace("DIR", str(directory)))
    process = ServerProcess(path, {}, workers=1)
    yield process
    process.stop()


schema = schemathesis.openapi.from_dict(DOCUMENT)


def _seconds(value: object) -> float:
    """A generated `wait` as a number, 0 when it is not one (the server refuses it)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_answers_match_the_document(case, server):
    long_polls = ("/v1/events", "/v1/projections/{name}/changes")
    if case.path in long_polls and _seconds((case.query or {}).get("wait")) > 0.1:
        case.query["wait"] = 0.1  # a long poll: its answer's shape is tested here, not the wait
    case.call_and_validate(base_url=server.url)
