from __future__ import annotations

import functools
import threading
import time

from common.workers import KeyedSerialExecutor


def test_same_key_runs_in_submission_order_one_at_a_time() -> None:
    ex = KeyedSerialExecutor(workers=4)
    seen: list[int] = []
    running = 0
    overlap = False
    lock = threading.Lock()

    def task(i: int) -> None:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap |= running > 1
        time.sleep(0.001)
        seen.append(i)
        with lock:
            running -= 1

    for i in range(50):
        ex.submit("port-a", functools.partial(task, i))
    assert ex.drain(5)
    assert seen == list(range(50))
    assert not overlap
    assert ex.shutdown(1)


def test_different_keys_run_in_parallel() -> None:
    ex = KeyedSerialExecutor(workers=2)
    both = threading.Barrier(2, timeout=2)
    ex.submit("a", both.wait)
    ex.submit("b", both.wait)  # would time out (BrokenBarrierError) if run serially
    assert ex.drain(3)
    assert not both.broken
    ex.shutdown(1)


def test_a_failing_task_does_not_stop_the_key() -> None:
    ex = KeyedSerialExecutor(workers=1)
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    ex.submit("k", boom)
    ex.submit("k", lambda: ran.append("after"))
    assert ex.drain(2)
    assert ran == ["after"]
    ex.shutdown(1)


def test_shutdown_refuses_new_work_and_reports_overrun() -> None:
    ex = KeyedSerialExecutor(workers=1)
    release = threading.Event()
    ex.submit("k", lambda: release.wait(2))
    assert ex.shutdown(0.05) is False
    release.set()
    try:
        ex.submit("k", lambda: None)
    except RuntimeError:
        pass
    else:
        raise AssertionError("submit after shutdown must be refused")
