"""The controller's RPC endpoint without a broker: validation and errors."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from agents.controller.db.engine import DatabaseError
from agents.controller.rpcapi import ControllerEndpoint
from common.errors import InvalidMessage
from common.messages import DesiredState, DesiredStateRequest, PingReply, envelope


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.asked: list[tuple[str, str, float]] = []
        self.fail = fail

    def desired_state(self, host: str, kind: str, retention_days: float) -> DesiredState:
        if self.fail:
            raise DatabaseError(url="sqlite://", problem="disk I/O error")
        self.asked.append((host, kind, retention_days))
        return DesiredState(host=host, kind=kind)  # type: ignore[arg-type]


def raised(call: Any) -> BaseException:
    """The error oslo sends back: expected errors come wrapped in ExpectedException."""
    with pytest.raises(Exception) as err:
        call()
    exc_info = getattr(err.value, "exc_info", None)
    return exc_info[1] if exc_info else err.value


def test_answers_from_the_store_with_the_retention() -> None:
    store = FakeStore()
    endpoint = ControllerEndpoint(store, retention_days=3)  # type: ignore[arg-type]
    req = DesiredStateRequest(host="node1", kind="l2")
    with capture_logs() as logs:
        for payload in (req, envelope(req)):
            got = endpoint.desired_state({}, payload=payload)
            assert isinstance(got, DesiredState) and (got.host, got.kind) == ("node1", "l2")
    assert store.asked[0] == ("node1", "l2", 3)
    assert logs[0]["event"] == "desired_state_sent" and logs[0]["ports"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"host": "node1"},
        envelope(PingReply(host="node1", kind="l2", version="1", uptime_s=1)),
        {
            "schema": "desired_state_request",
            "version": "1.0",
            "data": {"host": "a b", "kind": "l2"},
        },
        {"schema": "desired_state_request", "version": "2.0", "data": {}},
    ],
)
def test_bad_requests_are_refused_with_invalid_message(payload: Any) -> None:
    endpoint = ControllerEndpoint(FakeStore(), retention_days=3)  # type: ignore[arg-type]
    with capture_logs() as logs:
        err = raised(lambda: endpoint.desired_state({}, payload=payload))
    assert isinstance(err, InvalidMessage)
    assert [e["event"] for e in logs] == ["desired_state_refused"]


def test_a_database_outage_is_a_typed_answer() -> None:
    endpoint = ControllerEndpoint(FakeStore(fail=True), retention_days=3)  # type: ignore[arg-type]
    req = DesiredStateRequest(host="node1", kind="compute")
    with capture_logs() as logs:
        err = raised(lambda: endpoint.desired_state({}, payload=req))
    assert isinstance(err, DatabaseError)
    assert [e["event"] for e in logs] == ["desired_state_failed"]
