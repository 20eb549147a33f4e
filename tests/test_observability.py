"""Metrics and access logs: what an operator watches, without secrets or bodies."""

from __future__ import annotations

import re

import orjson

from projections.worker import wait_until

CONFIG = """
[sources.app]
verifier = "token"
secret_env = "APP_TOKEN"
[projections.entities]
source = "app"
key = "/id"
"""


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def test_metrics_count_outcomes_and_watch_projections(make_client):
    client = make_client(CONFIG, env={"APP_TOKEN": "s3cret"})
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/hooks/app", content=b'{"id": "1"}', headers=ok).status_code == 202
    assert client.post("/hooks/app", content=b'{"id": "2"}', headers=ok).status_code == 202
    assert (
        client.post("/hooks/app", content=b"x", headers={"Authorization": "Bearer no"}).status_code
        == 401
    )
    assert client.post("/hooks/nope", content=b"x").status_code == 404
    assert client.post("/hooks/app", content=b"not json", headers=ok).status_code == 202  # poison

    def settled():
        text = client.get("/metrics").text
        return (
            metric(text, "hookledger_projection_state", projection="entities", state="failed") == 1
        )

    assert wait_until(settled, 10)
    text = client.get("/metrics").text
    assert metric(text, "hookledger_deliveries_total", source="app", outcome="accepted") == 3
    assert metric(text, "hookledger_deliveries_total", source="app", outcome="bad_signature") == 1
    assert (
        metric(text, "hookledger_deliveries_total", source="<unknown>", outcome="unknown_source")
        == 1
    )
    assert metric(text, "hookledger_ingest_seconds_count", source="app") == 3
    assert metric(text, "hookledger_append_batch_size_sum") == 3
    assert metric(text, "hookledger_head_position") == 3
    assert metric(text, "hookledger_projection_position", projection="entities") == 2
    assert metric(text, "hookledger_projection_lag", projection="entities") == 1
    assert metric(text, "hookledger_projection_errors", projection="entities") == 1
    assert metric(text, "hookledger_projection_state", projection="entities", state="live") == 0
    assert metric(text, "hookledger_database_up") == 1


def test_access_log_lines_carry_templates_not_secrets(make_client, capsys):
    client = make_client(CONFIG, env={"APP_TOKEN": "s3cret"})
    capsys.readouterr()
    client.post("/hooks/app?token=s3cret", content=b'{"id": "body-secret"}')
    client.get("/v1/events/1")
    client.get("/no/such/route")
    client.get("/healthz")  # a later turn of the loop: everything before it is written
    text = capsys.readouterr().err
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith('{"ts"')]
    assert [(line["method"], line["path"], line["status"]) for line in lines[:3]] == [
        ("POST", "/hooks/{source}", 202),
        ("GET", "/v1/events/{position}", 200),
        ("GET", "<unmatched>", 404),
    ]
    assert lines[0]["source"] == "app"
    assert all(isinstance(line["ms"], float) and line["ts"] > 1.7e9 for line in lines)
    assert "s3cret" not in text and "body-secret" not in text


def test_the_access_log_can_be_turned_off(make_client, capsys):
    client = make_client('[server]\naccess_log = false\n[sources.app]\nverifier = "none"\n')
    capsys.readouterr()
    assert client.post("/hooks/app", content=b"{}").status_code == 202
    client.get("/healthz")
    assert '"path":"/hooks/{source}"' not in capsys.readouterr().err
