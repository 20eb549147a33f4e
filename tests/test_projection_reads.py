"""Edge cases of reading projections: tombstones by key, flags, a halted first build."""

from __future__ import annotations

from projections.worker import wait_until
from tests.projection_support import entities_toml

CONFIG = entities_toml()


def post(client, body: bytes) -> int:
    r = client.post("/hooks/app", content=body)
    assert r.status_code == 202, r.text
    return r.json()["position"]


def test_a_tombstone_is_404_by_key_unless_asked_for(make_client):
    client = make_client(CONFIG)
    post(client, b'{"event_type":"data_updated","entity":"c","id":"1","data":{"a":1},"version":1}')
    last = post(client, b'{"event_type":"data_deleted","entity":"c","id":"1","version":2}')
    url = "/v1/projections/entities/rows/c/1"
    gone = client.get(url, params={"min_position": last})
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"
    shown = client.get(url, params={"include_deleted": "true"})
    assert shown.status_code == 200 and shown.json()["deleted"] is True
    assert client.get(url, params={"include_deleted": "yes"}).status_code == 400
    listing = client.get("/v1/projections/entities/rows", params={"include_deleted": "maybe"})
    assert listing.status_code == 400


def test_a_halted_first_build_says_so_instead_of_retry_later(make_client):
    # the poison event is in the log before the projection exists: its first build halts
    plain = make_client(CONFIG.split("[projections.entities]")[0])
    post(plain, b'{"event_type":"data_updated","entity":"c","id":"1","data":{}}')  # no version
    client = make_client(CONFIG)

    def halted() -> bool:
        r = client.get("/v1/projections/entities/rows")
        return r.status_code == 503 and r.json()["error"] == "projection_failed"

    assert wait_until(halted, 10)
    detail = client.get("/v1/projections/entities/rows").json()["detail"]
    assert "version /version is missing" in detail and "projections retry entities" in detail
