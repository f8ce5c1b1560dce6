"""Daemon life cycle shared by the agents: signals, systemd notify protocol, watchdog.

`run(service)` owns the main thread of an agent process:
- calls `service.start()` (consumers up, start-up reconcile done), then tells systemd
  READY=1; a failure in start() exits non-zero before READY, so systemd sees a failed
  start instead of a half-started daemon;
- pings WATCHDOG=1 every WATCHDOG_USEC/2 while `service.healthy()` is true (a wedged
  agent stops pinging and systemd restarts it);
- SIGTERM/SIGINT: STOPPING=1, `service.stop(grace)` (stop consuming, finish or hand back
  in-flight work within the bound), exit 0;
- SIGHUP: `service.reload()` (re-reads the log level).

The notify protocol is a datagram to $NOTIFY_SOCKET (sd_notify(3)); no libsystemd needed.
Nothing here knows what an agent does.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import FrameType
from typing import Protocol

import structlog

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


def run(service: Service, *, name: str, grace: float = 30.0, idle_tick: float = 5.0) -> int:
    stopping = threading.Event()
    reload_requested = threading.Event()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stopping.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        reload_requested.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    try:
        service.start()
    except Exception as err:
        log.exception("start_failed", service=name, error=str(err))
        try:
            service.stop(grace=min(grace, 5.0))
        except Exception:  # already failing; the first error is the one that matters
            log.exception("stop_after_failed_start_failed", service=name)
        return 1
    sd_notify(f"READY=1\nSTATUS={name} serving")
    log.info("service_ready", service=name)

    tick = watchdog_interval() or idle_tick
    while not stopping.wait(tick):
        if reload_requested.is_set():
            reload_requested.clear()
            try:
                service.reload()
                log.info("service_reloaded", service=name)
            except Exception as err:  # a bad reload keeps the old settings running
                log.error("reload_failed", service=name, error=str(err))
        if service.healthy():
            sd_notify("WATCHDOG=1")
        else:
            log.warning("service_unhealthy", service=name)

    sd_notify(f"STOPPING=1\nSTATUS={name} stopping")
    log.info("service_stopping", service=name, grace_s=grace)
    try:
        service.stop(grace=grace)
    except Exception as err:
        log.exception("stop_failed", service=name, error=str(err))
        return 1
    log.info("service_stopped", service=name)
    return 0
