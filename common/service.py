"""Daemon life cycle shared by the agents: signals, systemd notify protocol, watchdog.

`run(service)` owns the main thread of an agent process:
- calls `service.start()` (consumers up, start-up reconcile done), then tells systemd
  READY=1; a failure in start() exits non-zero before READY, so systemd sees a failed
  start instead of a half-started daemon;
- pings WATCHDOG=1 every WATCHDOG_USEC/2 while `service.healthy()` is true (a wedged
  agent stops pinging and systemd restarts it);
- SIGTERM/SIGINT: STOPPING=1, `service.stop(grace)` (stop consuming, finish or hand back
  in-flight work within the bound), exit 0;
- SIGTERM/SIGINT during start(): start() runs on its own thread, so the main thread
  hears the signal at once. start() is never broken off (an exception thrown into a
  half-opened AMQP channel leaves a connection whose close never returns); it gets a
  short bound to return, then stop() undoes it, exit 0. A start() still blocked after
  the bound (oslo.messaging retries an unreachable broker forever) is abandoned: the
  process exits 0 without cleaning up, which is what a kill -9 does and what the
  agents are built to survive (their journal replays);
- once stopped, the process ends at once (os._exit with the exit code, logs flushed):
  the interpreter's own finalization would only garbage-collect every module, for
  seconds on a loaded machine, inside the unit's stop timeout;
- SIGHUP: RELOADING=1, `service.reload()` (re-reads the log level), READY=1; handled
  at once, not at the next watchdog tick;
- SIGUSR2: the stack of every thread is written to stderr (the journal), and the daemon
  goes on: what an operator asks of a daemon that seems stuck (`systemctl kill -s USR2`).

The notify protocol is a datagram to $NOTIFY_SOCKET (sd_notify(3)); no libsystemd needed.
Signal handlers only set flags; all work happens on the main thread's loop (start() on
a thread of its own, which the main thread waits for). The handlers that were installed
before are put back when run() ends; with `exit_process=False` it returns the exit code
instead of ending the process, so it can be called in a test process.
Nothing here knows what an agent does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, Protocol

import structlog

from common.errors import AgentsError
from common.stacks import stack_dumps_on_usr2

log = structlog.get_logger()


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self, grace: float) -> None: ...

    def healthy(self) -> bool: ...

    def reload(self) -> None: ...


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send `state` to systemd's notify socket; False when not run under systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as err:
        log.warning("sd_notify_failed", state=state, error=str(err))
        return False


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Half of WatchdogSec, as sd_watchdog_enabled(3) recommends; None when not enabled."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        return None


class _Signals:
    """Flags set by signal handlers, and one event that wakes the main loop for any."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.stop_signal = ""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_term,
            signal.SIGHUP: self._on_hup,
        }
        for signum, handler in handlers.items():
            self._previous[signum] = signal.signal(signum, handler)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_term(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signal.Signals(signum).name
        self.stop.set()
        self.wake.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload.set()
        self.wake.set()


def _reload(service: Service, name: str) -> None:
    # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) match READY to RELOADING.
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        service.reload()
        log.info("service_reloaded", service=name)
    except Exception as err:  # a bad reload keeps the old settings running
        log.error("reload_failed", service=name, error=str(err))
    sd_notify(f"READY=1\nSTATUS={name} serving")


def run(
    service: Service,
    *,
    name: str,
    grace: float = 30.0,
    idle_tick: float = 5.0,
    exit_process: bool = True,
) -> int:
    """Run `service` until SIGTERM/SIGINT, then end the process with its exit code.

    Once the service has stopped (or failed to start) nothing is left to clean up, so
    the process ends at once (`end_process`) instead of through the interpreter's
    finalization: that is a full garbage collection of every loaded module, 0.4 s on
    an idle machine and over 4 s on a loaded one (measured on a compute-agent), all of
    it counted against the unit's stop timeout. A start() abandoned after SIGTERM must
    end that way in any case: its thread may hold connections and non-daemon threads
    whose clean-up would never return. `exit_process=False` returns the code instead
    (a test's own process).
    """
    signals = _Signals()
    signals.install()
    try:
        with stack_dumps_on_usr2() as unavailable:
            if unavailable:
                log.warning("stack_dumps_unavailable", error=unavailable)
            code = _run(service, signals, name=name, grace=grace, idle_tick=idle_tick)
    finally:
        signals.restore()
    if exit_process:
        end_process(code)
    return code


def end_process(code: int) -> NoReturn:
    """Flush the logs and the standard streams, then exit without finalization."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class _Starting:
    """service.start() on its own thread; the main thread stays free for signals."""

    def __init__(self, service: Service, wake: threading.Event) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._service = service
        self._wake = wake
        # A daemon: a start() blocked for good must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name="start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._service.start()
        except BaseException as err:  # handed to the main thread, which reports it
            self.error = err
        finally:
            self.done.set()
            self._wake.set()


def _run(service: Service, signals: _Signals, *, name: str, grace: float, idle_tick: float) -> int:
    sd_notify(f"STATUS={name} starting")
    # what start() gets to return after a stop, and stop() to undo an unfinished start
    bound = min(grace, 5.0)
    starting = _Starting(service, signals.wake)
    while not starting.done.is_set() and not signals.stop.is_set():
        signals.wake.wait()
        signals.wake.clear()
    if not starting.done.is_set():
        # Asked to stop before it could serve: let start() return, then undo what it
        # opened.
        log.warning("start_interrupted", service=name, signal=signals.stop_signal)
        sd_notify(f"STOPPING=1\nSTATUS={name} stopped while starting")
        if not starting.done.wait(bound):
            log.warning(
                "start_abandoned",
                service=name,
                waited_s=bound,
                detail="start() did not return; exiting without clean-up, as after kill -9",
            )
            return 0  # run() ends the process without finalization, so nothing waits
        try:
            service.stop(grace=bound)
        except Exception:
            log.exception("stop_after_interrupted_start_failed", service=name)
        return 0
    if starting.error is not None:
        err = starting.error
        if not isinstance(err, Exception):  # SystemExit and the like: not ours to judge
            raise err
        # A typed error already says what is wrong (a missing libvirtd, a bad namespace):
        # the operator needs that line, not a traceback; anything else is a bug.
        if isinstance(err, AgentsError):
            log.error("start_failed", service=name, error=str(err))
        else:
            log.error("start_failed", service=name, error=str(err), exc_info=err)
        sd_notify(f"STATUS={name} failed to start: {err}")
        try:
            service.stop(grace=bound)
        except Exception:  # already failing; the first error is the one that matters
            log.exception("stop_after_failed_start_failed", service=name)
        return 1
    if not signals.stop.is_set():  # a stop asked for as start() returned: no READY
        sd_notify(f"READY=1\nSTATUS={name} serving")
        log.info("service_ready", service=name)

    watchdog = watchdog_interval()
    tick = watchdog or idle_tick
    next_tick = time.monotonic()  # the first watchdog ping goes out right after READY
    while not signals.stop.is_set():
        signals.wake.wait(max(0.0, next_tick - time.monotonic()))
        signals.wake.clear()
        if signals.stop.is_set():
            break
        if signals.reload.is_set():
            signals.reload.clear()
            log.info("signal_received", signal="SIGHUP")
            _reload(service, name)
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + tick
            if service.healthy():
                if watchdog is not None:
                    sd_notify("WATCHDOG=1")
            else:
                # No ping: systemd's watchdog restarts the agent after WatchdogSec.
                log.warning("service_unhealthy", service=name)

    log.info("signal_received", signal=signals.stop_signal)
    sd_notify(f"STOPPING=1\nSTATUS={name} stopping")
    log.info("service_stopping", service=name, grace_s=grace)
    try:
        service.stop(grace=grace)
    except Exception as err:
        log.exception("stop_failed", service=name, error=str(err))
        return 1
    log.info("service_stopped", service=name)
    return 0
