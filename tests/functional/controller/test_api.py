"""The REST API over a real store (SQLite) and a real broker connection.

No agent runs here: casts go to hosts nobody serves, which the mandatory flag turns
into a recorded `casts.failed` hop (the operation stays open for the re-drive). What
is tested is the HTTP surface: validation naming field and value, error codes,
idempotency, the event stream replaying from the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from fastapi.testclient import TestClient

from agents.controller.db.records import Records
from agents.controller.db.store import Store
from agents.controller.tokens import add
from common.messages import AgentHeartbeat, InstanceEvent
from tests.conftest import BrokerScope
from tests.functional.controller.conftest import in_process_api

pytestmark = pytest.mark.functional


@pytest.fixture
def api(broker_scope: BrokerScope, tmp_path: Path) -> Iterator[tuple[TestClient, Store]]:
    secret = add(tmp_path / "tokens", "admin", "test")
    with in_process_api(broker_scope, tmp_path) as (client, store):
        client.headers["Authorization"] = f"Bearer {secret}"
        host = broker_scope.host("node1")
        Records(store).apply(
            "agent.heartbeat",
            AgentHeartbeat(
                host=host,
                kind="compute",
                version="t",
                started_at=datetime.now(UTC),
                uptime_s=1,
                vcpus=8,
                memory_mb=4096,
            ),
        )
        client.host_name = host  # type: ignore[attr-defined]
        yield client, store


def error(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_create_then_read_back(api: tuple[TestClient, Store]) -> None:
    client, _ = api
    host = client.host_name  # type: ignore[attr-defined]
    resp = client.post("/v1/instances", json={"name": "web", "count": 2, "host": host})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["operation"] == "create" and body["request_id"].startswith("req-")
    assert [i["name"] for i in body["instances"]] == ["web-1", "web-2"]
    listed = client.get("/v1/instances").json()
    assert [i["name"] for i in listed] == ["web-1", "web-2"]
    shown = client.get("/v1/instances/web-1").json()
    assert shown["operations"][0]["kind"] == "create"
    # nobody serves the host: the cast failure is a hop of the timeline, not a lost request
    events = [e["event"] for e in client.get("/v1/instances/web-1/timeline").json()["events"]]
    assert events[:2] == ["api.received", "casts.failed"]
    ports = client.get("/v1/ports", params={"host": host}).json()
    assert len({p["fixed_ip"] for p in ports}) == 2
    hosts = client.get("/v1/hosts").json()
    assert hosts[0]["vcpus_used"] == 2 and hosts[0]["state"] == "up"


def test_a_listed_instance_is_its_shown_one(api: tuple[TestClient, Store]) -> None:
    """The list builds its rows apart from `show` (plain tuples, for speed): same shape,
    same values, ports in their order, and each filter narrows it."""
    client, _ = api
    host = client.host_name  # type: ignore[attr-defined]
    body = {"name": "db", "count": 3, "host": host, "networks": ["provider", "net1"]}
    assert client.post("/v1/instances", json=body).status_code == 202
    client.post("/v1/instances", json={"name": "web", "host": host})
    resp = client.get("/v1/instances")
    assert resp.headers["content-type"] == "application/json"
    listed = resp.json()
    assert [i["name"] for i in listed] == ["db-1", "db-2", "db-3", "web"]
    for inst in listed:
        shown = client.get(f"/v1/instances/{inst['uuid']}").json()
        shown.pop("operations")
        assert inst == shown
        assert inst["created_at"].endswith("Z")
    assert [p["network"] for p in listed[0]["ports"]] == ["provider", "net1"]
    assert [i["name"] for i in client.get("/v1/instances", params={"name": "web"}).json()] == [
        "web"
    ]
    assert len(client.get("/v1/instances", params={"host": host}).json()) == 4
    assert client.get("/v1/instances", params={"host": "elsewhere"}).json() == []
    assert len(client.get("/v1/instances", params={"state": "building"}).json()) == 4
    assert client.get("/v1/instances", params={"state": "deleted"}).json() == []


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"name": "bad name!"}, "name", "request.invalid"),
        ({"count": 0}, "count", "request.invalid"),
        ({"count": 101}, "count", "request.invalid"),
        ({"flavor": "huge"}, "flavor", "flavor.unknown"),
        ({"networks": ["nope"]}, "networks", "network.unknown"),
        ({"networks": ["net1", "net1"]}, "networks", "request.invalid"),
        ({"host": "-x-"}, "host", "request.invalid"),
        ({"image": "../etc/passwd"}, "image", "request.invalid"),
        ({"colour": "red"}, "colour", "request.invalid"),
        ({"name": "x" * 64}, "name", "request.invalid"),
    ],
)
def test_bad_input_names_field_and_value(
    api: tuple[TestClient, Store], body: dict[str, Any], field: str, code: str
) -> None:
    client, store = api
    resp = client.post("/v1/instances", json=body)
    assert resp.status_code == 422, resp.text
    err = error(resp)
    assert (err["code"], err["field"]) == (code, field)
    assert "value" in err
    if code == "flavor.unknown":
        assert err["valid"] == ["m1.medium", "m1.small", "m1.tiny"]
    assert store.list_instances() == []


def test_not_json_and_wrong_types(api: tuple[TestClient, Store]) -> None:
    client, _ = api
    resp = client.post(
        "/v1/instances", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422 and error(resp)["code"] == "request.invalid"
    assert (error(resp)["field"], error(resp)["value"]) == ("body", None)
    assert error(resp)["message"].startswith("the request body is not valid JSON (at character 1:")
    resp = client.post("/v1/instances", json={"count": "many"})
    assert error(resp)["field"] == "count" and error(resp)["value"] == "many"


def test_conflicts_and_not_found(api: tuple[TestClient, Store]) -> None:
    client, _ = api
    assert error(client.get("/v1/instances/ghost"))["code"] == "instance.not_found"
    assert client.get("/v1/instances/ghost").status_code == 404
    resp = client.post("/v1/instances", json={"host": "elsewhere"})
    assert resp.status_code == 409 and error(resp)["code"] == "host.unavailable"
    resp = client.post("/v1/instances", json={"flavor": "m1.medium", "count": 5})
    assert resp.status_code == 409 and error(resp)["code"] == "scheduler.no_host"
    assert error(client.get("/v1/operations/xyz"))["code"] == "operation.not_found"
    assert error(client.get("/v1/nothing"))["code"] == "route.not_found"


def test_idempotency_key(api: tuple[TestClient, Store]) -> None:
    client, store = api
    headers = {"Idempotency-Key": "build-42"}
    first = client.post("/v1/instances", json={"name": "one"}, headers=headers)
    again = client.post("/v1/instances", json={"name": "one"}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json() == again.json()
    other = client.post("/v1/instances", json={"name": "two"}, headers=headers)
    assert other.status_code == 409 and error(other)["code"] == "idempotency.conflict"
    bad = client.post("/v1/instances", json={}, headers={"Idempotency-Key": "no spaces"})
    assert error(bad)["field"] == "Idempotency-Key"
    assert len(store.list_instances()) == 1


def test_delete_reboot_and_busy(api: tuple[TestClient, Store]) -> None:
    client, _ = api
    client.post("/v1/instances", json={"name": "web"})
    resp = client.post("/v1/instances/web/reboot", json={"hard": True})
    assert resp.status_code == 409 and error(resp)["code"] == "instance.busy"
    resp = client.delete("/v1/instances/web")
    assert resp.status_code == 202 and resp.json()["operation"] == "delete"
    assert client.get("/v1/instances/web").json()["state"] == "deleting"


def test_event_stream_replays_from_the_database(api: tuple[TestClient, Store]) -> None:
    client, _ = api
    rid = client.post("/v1/instances", json={"name": "s"}).json()["request_id"]
    with client.stream(
        "GET", "/v1/events", params={"request_id": rid, "replay": 1, "timeout": 0.5}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [d["event"] for d in data][:2] == ["api.received", "casts.failed"]
    assert all(d["request_id"] == rid for d in data)
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == sorted(ids) and len(ids) == len(data)


def test_openapi_and_health(api: tuple[TestClient, Store]) -> None:
    client, _ = api
    spec = client.get("/openapi.json").json()
    assert "/v1/instances" in spec["paths"] and "/v1/events" in spec["paths"]
    assert client.get("/healthz").json()["status"] == "ok"
    flavors = {f["name"] for f in client.get("/v1/flavors").json()}
    assert "m1.tiny" in flavors
    nets = client.get("/v1/networks").json()
    assert {"net1", "provider"} <= {n["name"] for n in nets}


def test_each_operation_is_logged_with_the_ids_operators_search_for(
    api: tuple[TestClient, Store],
) -> None:
    """The controller's journal carries request_id and instance_uuid like the agents':
    a line per instance when a request is accepted, one when its operation ends."""
    client, store = api
    host = client.host_name  # type: ignore[attr-defined]
    with structlog.testing.capture_logs() as logs:
        body = client.post("/v1/instances", json={"name": "lg", "count": 2, "host": host}).json()
        rid = body["request_id"]
        for inst in body["instances"]:
            Records(store).apply(
                "instance.create.end",
                InstanceEvent(
                    request_id=rid, host=host, instance_uuid=inst["uuid"], state="running"
                ),
            )
    uuids = sorted(i["uuid"] for i in body["instances"])
    accepted = [e for e in logs if e["event"] == "operation_accepted"]
    finished = [e for e in logs if e["event"] == "operation_finished"]
    assert sorted(e["instance_uuid"] for e in accepted) == uuids
    assert {(e["operation"], e["request_id"], e["host"]) for e in accepted} == {
        ("create", rid, host)
    }
    assert sorted(e["instance_uuid"] for e in finished) == uuids
    assert {(e["operation"], e["request_id"], e["state"]) for e in finished} == {
        ("create", rid, "done")
    }
