"""common.service.run(): the systemd notify protocol as seen from a real datagram socket.

Each test runs run() on pytest's main thread (signal handlers need it) with a small
stateful service, listens on a real unix datagram socket named by NOTIFY_SOCKET, and
sends itself real signals once READY=1 has arrived (run() restores the old handlers
when it returns, so the test process is left as it was).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from common.service import run, sd_notify, watchdog_interval
from tests.notify import NotifyListener


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    listener = NotifyListener()
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()


class Agent:
    """A service that records what run() asked of it and when."""

    def __init__(self, notify: NotifyListener, start_takes: float = 0.0) -> None:
        self.notify = notify
        self.start_takes = start_takes
        self.calls: list[tuple[str, object]] = []
        self.is_healthy = True
        self.fail_start = False
        self.fail_stop = False
        self.fail_reload = False
        self.states_seen_during_start: list[str] | None = None

    def start(self) -> None:
        self.calls.append(("start", None))
        time.sleep(self.start_takes)
        self.states_seen_during_start = self.notify.states()
        if self.fail_start:
            raise RuntimeError("broker refused us")

    def stop(self, grace: float) -> None:
        self.calls.append(("stop", grace))
        if self.fail_stop:
            raise RuntimeError("stuck")

    def healthy(self) -> bool:
        return self.is_healthy

    def reload(self) -> None:
        self.calls.append(("reload", None))
        if self.fail_reload:
            raise ValueError("bad log level")


def signal_when(notify: NotifyListener, ready: Callable[[], bool], signum: int) -> threading.Thread:
    """Send `signum` to this process once `ready()` holds (at most 5 s from now)."""

    def go() -> None:
        try:
            notify.wait_for(ready)
        finally:
            os.kill(os.getpid(), signum)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_ready_only_after_start_then_watchdog_then_stopping(
    notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    agent = Agent(notify, start_takes=0.2)
    signal_when(notify, lambda: notify.count("WATCHDOG=1") >= 3, signal.SIGTERM)

    rc = run(agent, name="toy", grace=7.0, exit_process=False)

    assert rc == 0
    assert agent.states_seen_during_start == ["STATUS=toy starting"]
    notify.wait_for(lambda: "STOPPING=1" in notify.states())
    states = notify.states()
    assert states.index("READY=1") < states.index("WATCHDOG=1") < states.index("STOPPING=1")
    assert agent.calls == [("start", None), ("stop", 7.0)]


def test_unhealthy_service_gets_no_watchdog_ping(
    notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    agent = Agent(notify)
    agent.is_healthy = False
    ready_at: list[float] = []

    def ready_for_a_while() -> bool:
        if "READY=1" in notify.states() and not ready_at:
            ready_at.append(time.monotonic())
        return bool(ready_at) and time.monotonic() - ready_at[0] > 0.4

    signal_when(notify, ready_for_a_while, signal.SIGTERM)

    assert run(agent, name="toy", exit_process=False) == 0
    notify.wait_for(lambda: "STOPPING=1" in notify.states())
    assert notify.count("WATCHDOG=1") == 0


def test_no_watchdog_ping_for_another_pid(
    notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd sets WATCHDOG_PID for the main process; a child that inherited the
    # environment must not ping on its behalf.
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    agent = Agent(notify)
    start = time.monotonic()
    signal_when(
        notify,
        lambda: "READY=1" in notify.states() and time.monotonic() - start > 0.3,
        signal.SIGTERM,
    )
    assert run(agent, name="toy", idle_tick=0.05, exit_process=False) == 0
    assert notify.count("WATCHDOG=1") == 0


def test_sighup_reloads_at_once_not_at_the_next_tick(notify: NotifyListener) -> None:
    agent = Agent(notify)
    sent: list[float] = []

    def reload_then_stop() -> None:
        notify.wait_for(lambda: "READY=1" in notify.states())
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGHUP)
        try:
            notify.wait_for(lambda: notify.count("READY=1") >= 2)
            sent.append(time.monotonic())
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=reload_then_stop, daemon=True).start()

    assert run(agent, name="toy", idle_tick=60.0, exit_process=False) == 0
    assert ("reload", None) in agent.calls
    assert sent[1] - sent[0] < 1.0, "reload waited for the idle tick"
    states = notify.states()
    reloading = states.index("RELOADING=1")
    assert states[reloading + 1].startswith("MONOTONIC_USEC=")
    assert "READY=1" in states[reloading:]


def test_failed_reload_keeps_the_service_running(notify: NotifyListener) -> None:
    agent = Agent(notify)
    agent.fail_reload = True

    def reload_then_stop() -> None:
        notify.wait_for(lambda: "READY=1" in notify.states())
        os.kill(os.getpid(), signal.SIGHUP)
        try:
            notify.wait_for(lambda: notify.count("READY=1") >= 2)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=reload_then_stop, daemon=True).start()

    assert run(agent, name="toy", idle_tick=60.0, exit_process=False) == 0
    assert [c for c, _ in agent.calls] == ["start", "reload", "stop"]


def test_failed_start_exits_1_without_ready(notify: NotifyListener) -> None:
    agent = Agent(notify)
    agent.fail_start = True

    assert run(agent, name="toy", grace=30.0, exit_process=False) == 1
    notify.wait_for(lambda: any(s.startswith("STATUS=toy failed") for s in notify.states()))
    assert "READY=1" not in notify.states()
    assert any(
        s.startswith("STATUS=toy failed to start: broker refused us") for s in notify.states()
    )
    # What start() opened is closed again, within a short bound.
    assert agent.calls == [("start", None), ("stop", 5.0)]


def test_failed_stop_exits_1(notify: NotifyListener) -> None:
    agent = Agent(notify)
    agent.fail_stop = True
    signal_when(notify, lambda: "READY=1" in notify.states(), signal.SIGINT)

    assert run(agent, name="toy", exit_process=False) == 1
    notify.wait_for(lambda: "STOPPING=1" in notify.states())


def test_signal_handlers_are_restored(notify: NotifyListener) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    agent = Agent(notify)
    signal_when(notify, lambda: "READY=1" in notify.states(), signal.SIGTERM)
    run(agent, name="toy", exit_process=False)
    assert {s: signal.getsignal(s) for s in before} == before


def test_sd_notify_without_socket_is_a_no_op() -> None:
    assert sd_notify("READY=1", environ={}) is False


def test_sd_notify_to_a_missing_socket_reports_false() -> None:
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": "/nonexistent/notify"}) is False


def test_sd_notify_abstract_socket() -> None:
    name = f"agents-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sd_notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(100) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.05),  # never a busy loop
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


def test_watchdog_interval_for_this_pid() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(environ) == 1.0


def test_sigterm_during_start_lets_the_step_finish_then_stops(notify: NotifyListener) -> None:
    """SIGTERM while start() is in a step: the step is not broken off half-done (an
    exception thrown into a half-opened AMQP channel once left a close that never
    returned); start() returns, stop() undoes it, no READY, exit 0."""

    class Slow(Agent):
        def start(self) -> None:
            self.calls.append(("start", None))
            time.sleep(1.0)  # one step, not interruptible
            self.calls.append(("start finished", None))

    agent = Slow(notify)
    signal_when(notify, lambda: "STATUS=toy starting" in notify.states(), signal.SIGTERM)
    began = time.monotonic()

    assert run(agent, name="toy", grace=20.0, exit_process=False) == 0
    assert 0.9 < time.monotonic() - began < 5
    assert agent.calls == [("start", None), ("start finished", None), ("stop", 5.0)]
    assert "STOPPING=1" in notify.states()
    assert "READY=1" not in notify.states()


def test_sigterm_abandons_a_start_that_blocks(notify: NotifyListener) -> None:
    """oslo.messaging retries an unreachable broker forever inside start(): SIGTERM must
    still stop the daemon (systemd's TimeoutStartSec, `systemctl stop` while starting),
    after a bound, without a stop() that would run beside the blocked start()."""
    release = threading.Event()

    class Blocking(Agent):
        def start(self) -> None:
            self.calls.append(("start", None))
            release.wait(30)

    agent = Blocking(notify)
    signal_when(notify, lambda: "STATUS=toy starting" in notify.states(), signal.SIGTERM)
    began = time.monotonic()
    try:
        assert run(agent, name="toy", grace=1.0, exit_process=False) == 0
        assert 0.9 < time.monotonic() - began < 5
    finally:
        release.set()
    notify.wait_for(lambda: "STOPPING=1" in notify.states())
    assert "READY=1" not in notify.states()
    assert agent.calls == [("start", None)]


def test_sigusr2_dumps_every_threads_stack_and_the_service_goes_on(
    notify: NotifyListener, capfd: pytest.CaptureFixture[str]
) -> None:
    agent = Agent(notify)

    def dump_then_stop() -> None:
        notify.wait_for(lambda: "READY=1" in notify.states())
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=dump_then_stop, daemon=True).start()
    assert run(agent, name="toy", exit_process=False) == 0
    err = capfd.readouterr().err
    assert "most recent call first" in err and "dump_then_stop" in err, err[-2000:]
    assert agent.calls == [("start", None), ("stop", 30.0)]
