"""The API behind tokens: 401 without a known token, 403 for a reader's write, /healthz open.

In process (FastAPI's TestClient) over a real store (SQLite) and a real broker
connection, with a real token file made by `tokens.add`. Every refusal is checked for
its status, code, `WWW-Authenticate` header and for not echoing the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agents.controller.service import api_security
from agents.controller.settings import ControllerSettings
from agents.controller.tokens import TokenFileError, add, remove
from tests.conftest import BrokerScope
from tests.functional.controller.conftest import in_process_api

pytestmark = pytest.mark.functional


@dataclass
class Api:
    client: TestClient
    tokens_file: Path
    admin: str
    reader: str

    def get(self, path: str, token: str | None = None, **kw: Any) -> Any:
        return self.client.get(path, headers=_bearer(token), **kw)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
def api(broker_scope: BrokerScope, tmp_path: Path) -> Iterator[Api]:
    tokens_file = tmp_path / "tokens"
    admin = add(tokens_file, "admin", "root")
    reader = add(tokens_file, "reader", "ci")
    with in_process_api(broker_scope, tmp_path, "tokens") as (client, _):
        yield Api(client, tokens_file, admin, reader)


def refused(resp: Any, status: int, code: str, *secrets: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code, err
    assert err["field"] == "Authorization"
    for secret in secrets:
        assert secret not in resp.text
        assert all(secret not in v for v in resp.headers.values())
    return err


def test_no_token_is_401_with_www_authenticate(api: Api) -> None:
    resp = api.get("/v1/instances")
    err = refused(resp, 401, "auth.required")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="agents-controller"'
    assert "Authorization: Bearer <token>" in err["message"]
    for path in ("/v1/hosts", "/v1/events?timeout=1", "/openapi.json", "/docs"):
        refused(api.get(path), 401, "auth.required")
    refused(api.client.post("/v1/instances", json={}), 401, "auth.required")


def test_an_unknown_token_or_another_scheme_is_401_without_echo(api: Api) -> None:
    wrong = "agt_" + "x" * 43
    resp = api.get("/v1/instances", wrong)
    err = refused(resp, 401, "auth.invalid", wrong)
    assert resp.headers["WWW-Authenticate"].endswith('error="invalid_token"')
    assert "not one this controller knows" in err["message"]
    basic = api.client.get("/v1/instances", headers={"Authorization": f"Basic {api.admin}"})
    refused(basic, 401, "auth.invalid", api.admin)
    # a known token with a letter changed is as unknown as any other
    # one character off (never the token itself, whatever its last character is)
    near = api.admin[:-1] + ("B" if api.admin.endswith("A") else "A")
    refused(api.get("/v1/instances", near), 401, "auth.invalid", api.admin)


def test_a_reader_reads_and_is_refused_writes_with_403(api: Api) -> None:
    for path in ("/v1/instances", "/v1/hosts", "/v1/ports", "/v1/flavors", "/v1/operations"):
        assert api.get(path, api.reader).status_code == 200, path
    assert api.get("/v1/events?timeout=0.2", api.reader).status_code == 200
    resp = api.client.post("/v1/instances", json={}, headers=_bearer(api.reader))
    err = refused(resp, 403, "auth.forbidden", api.reader)
    assert err["message"] == (
        "token 'ci' has role reader, which may only read; POST /v1/instances needs role admin"
    )
    assert err["valid"] == ["admin"]
    resp = api.client.delete("/v1/instances/web", headers=_bearer(api.reader))
    refused(resp, 403, "auth.forbidden", api.reader)
    # the admin passes auth and meets the handler's own answer
    resp = api.client.delete("/v1/instances/web", headers=_bearer(api.admin))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "instance.not_found"


def test_healthz_stays_open_and_the_schema_tells_the_truth(api: Api) -> None:
    assert api.get("/healthz").status_code == 200
    schema = api.get("/openapi.json", api.reader).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in schema["paths"]["/healthz"]["get"]
    build = schema["paths"]["/v1/instances"]["post"]
    assert build["security"] == [{"bearer": []}]
    assert {"401", "403", "422", "4XX"} <= set(build["responses"])
    assert build["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "ShowInstance" in build["responses"]["202"]["links"]
    assert "403" not in schema["paths"]["/v1/instances"]["get"]["responses"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    events = schema["paths"]["/v1/events"]["get"]["responses"]["200"]
    assert events["content"]["text/event-stream"]["schema"]["required"] == ["data"]
    assert api.get("/docs", api.reader).status_code == 200


def test_a_removed_token_is_refused_on_the_next_request(api: Api) -> None:
    assert api.get("/v1/hosts", api.reader).status_code == 200
    remove(api.tokens_file, "ci")
    refused(api.get("/v1/hosts", api.reader), 401, "auth.invalid", api.reader)
    assert api.get("/v1/hosts", api.admin).status_code == 200


def test_a_token_file_turned_readable_fails_closed(api: Api) -> None:
    api.tokens_file.chmod(0o644)
    resp = api.get("/v1/hosts", api.admin)
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert err["code"] == "auth.unavailable"
    assert "mode 0644 lets group or others read or write" in err["message"]
    assert api.admin not in resp.text
    api.tokens_file.chmod(0o600)
    assert api.get("/v1/hosts", api.admin).status_code == 200


def test_auth_none_keeps_the_api_open(broker_scope: BrokerScope, tmp_path: Path) -> None:
    with in_process_api(broker_scope, tmp_path, "none") as (client, _):
        assert client.get("/v1/instances").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        schema = client.get("/openapi.json").json()
        assert "securitySchemes" not in schema["components"]


def test_the_controller_will_not_start_on_a_missing_or_open_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    with pytest.raises(TokenFileError, match=f"token file {path}: does not exist"):
        api_security(ControllerSettings(tokens_file=path))
    add(path, "admin", "root")
    path.chmod(0o604)
    with pytest.raises(TokenFileError, match="mode 0604 lets group or others"):
        api_security(ControllerSettings(tokens_file=path))
    path.chmod(0o600)
    tokens = api_security(ControllerSettings(tokens_file=path))
    assert tokens is not None and tokens.path == path
    assert api_security(ControllerSettings(auth="none", tokens_file=path)) is None
