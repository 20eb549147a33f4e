"""The documentation keeps up with the code."""

from __future__ import annotations

from pathlib import Path

from api.openapi import DOCUMENT
from ledger.config import ServerConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_route_in_the_openapi_document_has_a_section_in_api_md():
    text = (DOCS / "api.md").read_text()
    for path, operations in DOCUMENT["paths"].items():
        for method in operations:
            heading = f"### `{method.upper()} {path}`"
            assert heading in text, f"docs/api.md lacks {heading}"


def test_every_server_setting_is_documented():
    text = (DOCS / "configuration.md").read_text()
    for name in ServerConfig.__dataclass_fields__:
        assert f"`server.{name}`" in text, f"docs/configuration.md lacks server.{name}"


def test_every_rejection_reason_is_documented_with_the_filter():
    from ledger.recorder.rejections import REASONS

    text = (DOCS / "api.md").read_text()
    section = text[text.index("### `GET /v1/rejections`") :].split("\n## ", 1)[0]
    for reason in REASONS:
        assert f"`{reason}`" in section, f"docs/api.md's /v1/rejections lacks {reason}"
