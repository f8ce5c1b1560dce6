"""waiter.py: vif events are never lost, one deadline, plug_failed and abort fail at once."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from agents.compute.errors import BuildAborted, VifPlugFailed, VifPlugTimeout
from agents.compute.waiter import FAILED, PLUGGED, UNPLUGGED, VifWaiter

A, B = uuid.uuid4(), uuid.uuid4()


def test_event_before_expect_is_remembered() -> None:
    waiter = VifWaiter()
    waiter.on_event(PLUGGED, A)
    with waiter.expect([A]) as exp:
        exp.wait(0)  # already satisfied: no waiting at all


def test_event_after_expect_wakes_the_wait() -> None:
    waiter = VifWaiter()
    with waiter.expect([A, B]) as exp:
        threading.Timer(0.05, waiter.on_event, (PLUGGED, A)).start()
        threading.Timer(0.1, waiter.on_event, (PLUGGED, B)).start()
        start = time.monotonic()
        exp.wait(5)
        assert time.monotonic() - start < 2


def test_one_deadline_for_all_ports_names_the_missing_ones() -> None:
    waiter = VifWaiter()
    with waiter.expect([A, B]) as exp:
        threading.Timer(0.05, waiter.on_event, (PLUGGED, A)).start()
        start = time.monotonic()
        with pytest.raises(VifPlugTimeout) as info:
            exp.wait(0.3)
        assert 0.3 <= time.monotonic() - start < 1.0
    assert str(B) in str(info.value) and str(A) not in str(info.value)


def test_plug_failed_fails_at_once_with_its_reason() -> None:
    waiter = VifWaiter()
    with waiter.expect([A, B]) as exp:
        threading.Timer(0.05, waiter.on_event, (FAILED, B, "no such bridge")).start()
        start = time.monotonic()
        with pytest.raises(VifPlugFailed, match="no such bridge"):
            exp.wait(10)
        assert time.monotonic() - start < 2


def test_remembered_failure_fails_a_later_wait() -> None:
    waiter = VifWaiter()
    waiter.on_event(FAILED, A, "tap exists")
    with waiter.expect([A]) as exp, pytest.raises(VifPlugFailed, match="tap exists"):
        exp.wait(5)


def test_latest_event_of_a_port_counts() -> None:
    waiter = VifWaiter()
    waiter.on_event(PLUGGED, A)
    waiter.on_event(UNPLUGGED, A)
    with waiter.expect([A]) as exp, pytest.raises(VifPlugTimeout):
        exp.wait(0.05)


def test_abort_wakes_the_wait() -> None:
    waiter = VifWaiter()
    with waiter.expect([A]) as exp:
        threading.Timer(0.05, exp.abort, ("deleted while building",)).start()
        with pytest.raises(BuildAborted, match="deleted while building"):
            exp.wait(10)


def test_no_ports_is_satisfied_immediately() -> None:
    with VifWaiter().expect([]) as exp:
        exp.wait(0)


def test_memory_is_bounded_by_age_and_count() -> None:
    now = [0.0]
    waiter = VifWaiter(retention=10, max_remembered=3, clock=lambda: now[0])
    ports = [uuid.uuid4() for _ in range(5)]
    for p in ports:
        waiter.on_event(PLUGGED, p)
    assert waiter.remembered() == 3
    now[0] = 11.0
    waiter.on_event(PLUGGED, A)
    assert waiter.remembered() == 1
    with waiter.expect([ports[-1]]) as exp, pytest.raises(VifPlugTimeout):
        exp.wait(0)  # forgotten: too old


def test_closed_expectation_is_forgotten() -> None:
    waiter = VifWaiter()
    exp = waiter.expect([A])
    exp.close()
    waiter.on_event(PLUGGED, A)  # must not touch the closed expectation
    assert exp.pending == {A}
