"""Subprocess helpers of the lab: run a command, wait for a condition, stop what was started.

Owns the small things every part of the lab needs: unique names, the path of this
checkout and of the installed console scripts, `run()` with captured text output,
`wait_for()` with a deadline, and `stop_process()`, which ends a process started in its
own session (SIGTERM or the signal given, then SIGKILL after a grace period).

Must not keep state between calls, nor signal a process it was not handed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
BROKER = ("127.0.0.1", 5672)


class LabError(Exception):
    """A lab step failed; the message names what and shows the tool's own words."""


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def run(
    cmd: Sequence[str],
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capture its output as text; CalledProcessError when `check` and it failed."""
    return subprocess.run(
        list(cmd),
        check=check,
        text=True,
        capture_output=True,
        timeout=timeout,
        env=None if env is None else dict(env),
    )


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call `predicate` until it returns something true; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def console_script(name: str) -> str:
    """Path of an installed console script next to this interpreter (else the bare name)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def broker_available() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(BROKER, timeout=1):
        return True
    return False


def free_ports(n: int) -> list[int]:
    """`n` different TCP ports of 127.0.0.1 that nothing listens on right now. They are
    bound together: one after the other, the kernel may hand the same free port out
    again (about 1 in 20,000 here)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET)) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def is_group_leader(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def signal_process(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process, to its whole group when it leads one (own session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if is_group_leader(proc):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10
) -> tuple[int, bool]:
    """Signal `proc`, wait up to `grace` seconds, then SIGKILL it.

    Returns its exit status and whether it had to be killed.
    """
    signal_process(proc, sig)
    try:
        return proc.wait(timeout=grace), False
    except subprocess.TimeoutExpired:
        signal_process(proc, signal.SIGKILL)
        return proc.wait(timeout=10), True


def tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command (which may hold spaces and ')'),
    numbered from field 3 (state) on; OSError when the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid it names one process for good, unlike the pid alone, and survives exec."""
    try:
        return int(_stat_fields(pid)[19])
    except OSError:
        return None


def cpu_ms(pid: int) -> float:
    """User + system CPU time of the process so far (/proc/PID/stat), in ms."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def cpu_of(command: str) -> float:
    """CPU so far of every process whose command is `command` (beam.smp: the broker
    nodes; postgres: the server and its backends), in ms."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == command:
                total += cpu_ms(int(entry.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return total
