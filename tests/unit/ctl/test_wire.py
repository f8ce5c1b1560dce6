"""The wire pieces on their own: SSE parsing, why a connection failed, the answer checks."""

from __future__ import annotations

import socket

import pytest

from agents.ctl import contract
from agents.ctl.errors import BadResponse
from agents.ctl.sse import SseEvent, parse
from agents.ctl.transport import unreachable_problem


def test_sse_events_comments_multiline_data_and_a_cut_tail() -> None:
    lines = [
        ": stream open",
        "",
        "id: 1",
        "event: timeline",
        'data: {"a":',
        "data:1}",
        "",
        ": keepalive",
        "",
        "retry: 100",
        "data: x",
        "",
        "id: 3",
        "data: cut off",  # no blank line: the stream ended mid-event
    ]
    assert list(parse(lines)) == [
        SseEvent("1", "timeline", '{"a":\n1}'),
        SseEvent("1", "message", "x"),  # the last id sticks
    ]


def test_why_a_connection_failed() -> None:
    assert unreachable_problem(ConnectionRefusedError(111, "x"), "h", 1) == "connection refused"
    gai = socket.gaierror(-2, "Name or service not known")
    assert (
        unreachable_problem(gai, "ctl", 1) == "cannot resolve host 'ctl': Name or service not known"
    )
    assert unreachable_problem(TimeoutError(), "h", 0.5) == "no connection within 0.5s"
    assert unreachable_problem(OSError(113, "No route to host"), "h", 1) == "No route to host"


def test_answer_checks_name_the_field() -> None:
    with pytest.raises(BadResponse, match=r"instance.ports is str"):
        contract.instance(
            {"uuid": "u", "name": "n", "host": None, "state": "s", "ports": "x"}, "GET /x"
        )
    with pytest.raises(BadResponse, match=r"port has no 'id'"):
        contract.instance(
            {"uuid": "u", "name": "n", "host": None, "state": "s", "ports": [{}]}, "GET /x"
        )
    with pytest.raises(BadResponse, match=r"event.id is bool"):
        contract.event(
            {"id": True, "at": "t", "event": "e", "instance_uuid": None, "final": False}, "GET /x"
        )
    with pytest.raises(BadResponse, match="lists no instance"):
        contract.accepted({"request_id": "r", "operation": "create", "instances": []}, "POST /x")
