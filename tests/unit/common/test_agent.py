"""The shared agent boundary: validate, check host, journal, order per key, replay, stop."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from common.agent import AgentEndpoint, CastSpec, Heartbeat, Intake, Ticket
from common.journal import Journal
from common.messages import PortDeleted, envelope
from common.workers import KeyedSerialExecutor


class Endpoint(AgentEndpoint):
    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def port_deleted(self, *args: Any, **kwargs: Any) -> None:
        self._take("port_deleted", args, kwargs)

    def ping(self, ctxt: Any, **_: Any) -> str:
        return "pong"


class Harness:
    def __init__(self, tmp: Path, run: Any = None) -> None:
        self.ran: list[tuple[str, str]] = []
        self.rejected: list[tuple[str, str]] = []
        self.journal = Journal(tmp)
        self.executor = KeyedSerialExecutor(2)

        def default_run(msg: PortDeleted, received: float, ticket: Ticket) -> None:
            self.ran.append(("port_deleted", str(msg.port_id)))

        self.intake = Intake(
            "node1",
            {"port_deleted": CastSpec(PortDeleted, lambda m: m.port_id, run or default_run)},
            self.executor,
            self.journal,
            lambda method, payload, problem, rid: self.rejected.append((method, problem)),
        )
        self.endpoint = Endpoint(self.intake)


def msg(host: str = "node1") -> dict[str, Any]:
    return envelope(PortDeleted(request_id="req-1", host=host, port_id=uuid.uuid4()))


def test_a_valid_cast_is_journaled_run_and_forgotten(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.endpoint.port_deleted({"request_id": "req-1"}, payload=msg())  # type: ignore[attr-defined]
    assert h.executor.drain(5)
    assert len(h.ran) == 1 and h.rejected == []
    assert h.journal.pending() == []


@pytest.mark.parametrize(
    ("payload", "extra", "problem"),
    [
        (msg(host="node2"), {}, "addressed to host 'node2', this is 'node1'"),
        ({"schema": "port_deleted", "version": "1.0", "data": {"host": "node1"}}, {}, "port_id"),
        ({"schema": "port_deleted", "version": "9.0", "data": {}}, {}, "version '9.0'"),
        ("garbage", {}, "data must be an object"),
        (msg(), {"ctxt": 1, "surprise": 2}, "unexpected argument(s): ctxt, surprise"),
    ],
)
def test_bad_casts_are_refused_by_name_and_nothing_is_journaled(
    tmp_path: Path, payload: object, extra: dict[str, Any], problem: str
) -> None:
    h = Harness(tmp_path)
    h.endpoint.port_deleted({}, payload=payload, **extra)  # type: ignore[attr-defined]
    assert h.executor.drain(5)
    assert h.ran == [] and len(h.rejected) == 1
    assert problem in h.rejected[0][1]
    assert h.journal.pending() == []


def test_work_left_by_a_killed_agent_is_replayed(tmp_path: Path) -> None:
    Journal(tmp_path).add("port_deleted", "k", msg())  # taken, then kill -9
    Journal(tmp_path).add("nonsense", "k", {})
    h = Harness(tmp_path)
    assert h.intake.replay() == 1
    assert h.executor.drain(5)
    assert len(h.ran) == 1 and h.journal.pending() == []


def test_stop_hands_back_what_has_not_begun(tmp_path: Path) -> None:
    gate = threading.Event()

    def slow(m: PortDeleted, received: float, ticket: Ticket) -> None:
        gate.wait(5)

    h = Harness(tmp_path, run=slow)
    for _ in range(6):  # two workers: two begin, four wait
        h.endpoint.port_deleted({}, payload=msg())  # type: ignore[attr-defined]
    threading.Timer(0.3, gate.set).start()
    assert h.intake.stop(grace=0.05) is False
    assert len(h.journal.pending()) == 4  # the two that ran are done, the rest kept


def test_a_deferred_ticket_is_settled_by_its_finisher(tmp_path: Path) -> None:
    tickets: list[Ticket] = []

    def later(m: PortDeleted, received: float, ticket: Ticket) -> None:
        tickets.append(ticket.defer())

    h = Harness(tmp_path, run=later)
    h.endpoint.port_deleted({}, payload=msg())  # type: ignore[attr-defined]
    h.endpoint.port_deleted({}, payload=msg())  # type: ignore[attr-defined]
    assert h.executor.drain(5)
    assert len(h.journal.pending()) == 2
    tickets[0].done()
    tickets[1].hand_back()
    assert len(h.journal.pending()) == 1


def test_calls_pass_through_and_unknown_methods_do_not_exist(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.endpoint.ping({}) == "pong"  # type: ignore[attr-defined]
    assert not hasattr(h.endpoint, "drop_tables")


def test_heartbeat_beats_at_once_and_survives_failures() -> None:
    beats: list[int] = []

    def beat() -> None:
        beats.append(1)
        if len(beats) == 1:
            raise OSError("broker away")

    hb = Heartbeat(beat, interval=0.02)
    hb.start()
    threading.Event().wait(0.2)
    hb.stop()
    assert len(beats) >= 3
