"""Durable intake: work an agent took from the broker and has not finished, on disk.

RabbitMQ acknowledges an RPC cast when it hands it over, before the endpoint runs
(docs/platform.md), so a cast taken and not yet worked lives only in the agent's
memory. The endpoint therefore writes each accepted message here before it returns
(a file per entry: written to a temporary name, fsync'd, renamed, directory fsync'd)
and removes it when the work is finished. A restart replays what is left, in the order
it was taken. The window between the broker's ack and the fsync is the only one left
in which a kill -9 can lose a message, and the controller's re-drive covers it.

Entries are JSON objects; what they mean is the caller's business. A file that cannot
be read (a crash mid-write leaves only a temporary file, which is removed; anything
else is damage) is set aside under `damaged/` and reported, never silently dropped.
It knows nothing about the broker or the agents.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

_SUFFIX = ".json"


@dataclass(frozen=True)
class Entry:
    name: str
    method: str
    key: str
    body: dict[str, Any]


class Journal:
    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = directory
        self._fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".tmp-*"):  # a write that never reached its rename
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def add(self, method: str, key: str, body: dict[str, Any]) -> Entry:
        """Persist one entry; when this returns, a kill -9 cannot lose it."""
        with self._lock:
            seq = next(self._counter)
        # Time first: names sort in the order entries were taken, across restarts too.
        name = f"{time.time_ns():020d}-{seq:06d}-{_safe(method)}{_SUFFIX}"
        data = json.dumps({"method": method, "key": key, "body": body}, separators=(",", ":"))
        tmp = self.directory / f".tmp-{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data.encode())
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.directory / name)
        if self._fsync:
            os.fsync(self._dir_fd)
        return Entry(name, method, key, body)

    def done(self, entry: Entry) -> None:
        """Forget a finished entry. Not fsync'd: replaying finished work is harmless, since
        every piece of work an agent journals is idempotent by its key."""
        (self.directory / entry.name).unlink(missing_ok=True)

    def pending(self) -> list[Entry]:
        """Entries left by an earlier run, oldest first; unreadable ones are set aside."""
        out: list[Entry] = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                raw = json.loads(path.read_text())
                entry = Entry(path.name, str(raw["method"]), str(raw["key"]), dict(raw["body"]))
            except (OSError, ValueError, KeyError, TypeError) as err:
                damaged = self.directory / "damaged"
                damaged.mkdir(exist_ok=True)
                path.rename(damaged / path.name)
                log.error("journal_entry_damaged", entry=path.name, error=str(err))
                continue
            out.append(entry)
        return out

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"*{_SUFFIX}"))

    def close(self) -> None:
        os.close(self._dir_fd)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in text)[:40]
