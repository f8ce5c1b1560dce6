"""A unix datagram socket standing in for systemd's notify socket, for tests.

It receives what a daemon sends with sd_notify(3) (READY=1, WATCHDOG=1, STOPPING=1,
STATUS=...) on a thread and keeps every line in order. The socket file is made
world-writable so a daemon running with reduced privileges can still reach it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path


class NotifyListener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 107 bytes: keep it short, not under tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
        self.path = str(self.dir / "sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def states(self) -> list[str]:
        """Every `KEY=value` line received, in order."""
        with self._lock:
            return [line for msg in self.messages for line in msg.splitlines()]

    def count(self, state: str) -> int:
        return self.states().count(state)

    def has(self, state: str) -> bool:
        return state in self.states()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"notify socket saw only {self.states()}")
            time.sleep(0.01)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
