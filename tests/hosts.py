"""Simulated hosts for tests: a network namespace per host, the broker relayed into it.

A process inside a namespace cannot reach the root namespace's 127.0.0.1, so each
`NamespaceHost` runs two socat relays (PLATFORM.md): one in the root namespace from a
unix socket to the broker, one inside the namespace from its own 127.0.0.1:5672 to that
socket. Agents inside then use the ordinary `rabbit://guest:guest@127.0.0.1:5672/`.

Everything is removed on exit, also when the test failed: processes first, then the
namespace (which takes its links with it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

BROKER = ("127.0.0.1", 5672)
REPO = Path(__file__).resolve().parents[1]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def run(cmd: Sequence[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _port_open(netns: str | None, port: int) -> bool:
    cmd = ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True).returncode == 0


class NamespaceHost:
    """A network namespace standing for one host, with the broker reachable inside it."""

    def __init__(self, name: str | None = None, relay_broker: bool = True) -> None:
        self.name = name or unique("tns")
        self.relay_broker = relay_broker
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.sock = self.tmp / "broker.sock"

    def __enter__(self) -> NamespaceHost:
        try:
            run(["ip", "netns", "add", self.name])
            self.exec_check(["ip", "link", "set", "lo", "up"])
            if self.relay_broker:
                self._start_relay()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_relay(self) -> None:
        self.procs.append(
            subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{self.sock},fork", f"TCP:{BROKER[0]}:{BROKER[1]}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(self.sock.exists, 5, what="root-side relay socket")
        self.procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.name,
                    "socat",
                    f"TCP-LISTEN:{BROKER[1]},bind=127.0.0.1,fork,reuseaddr",
                    f"UNIX-CONNECT:{self.sock}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: _port_open(self.name, BROKER[1]), 5, what="namespace-side relay")

    def exec_check(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *cmd])

    def spawn(
        self, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; it is killed on close()."""
        fh = log.open("ab")
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        fh.close()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM) if _is_group_leader(
                        proc
                    ) else proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL) if _is_group_leader(proc) else proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _is_group_leader(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def broker_available() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(BROKER, timeout=1):
        return True
    return False


def python_bin() -> str:
    return sys.executable


def console_script(name: str) -> str:
    """Path of an installed console script next to this interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
