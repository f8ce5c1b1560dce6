"""The l2-agent's local record of the ports it was asked to wire: one JSON file per port.

A port's file holds the state the last message about it asked for (`present` with the
port, or `absent`: a tombstone). Each write goes to a temporary file in the same
directory and is renamed over the old file; rename(2) is atomic and the page cache
outlives the process, so kill -9 at any moment leaves either the old or the new record,
never a torn one. One file per port keeps a write O(1) however many ports the host has.

Durability against a power cut is batched: a flusher thread fsyncs the files written
since its last round and then the directory, so a burst of writes shares one round
instead of paying two fsyncs each on the plug path (milliseconds each on a loaded
disk). A power cut can lose the last fraction of a second of changes, or leave a
just-written file empty; `load()` sets such a file aside and the start-up reconcile
goes on (after a power cut the kernel's links are gone too and are rebuilt from the
record).

It must not talk to the kernel or the broker; it only persists what the manager decides.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from common.messages import Port, RequestId

log = structlog.get_logger()

Wanted = Literal["present", "absent"]


class PortRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    port_id: UUID
    network_id: UUID | None
    wanted: Wanted
    port: Port | None = None  # set when wanted == "present"
    request_id: RequestId | None = None
    updated_at: datetime
    # the revision of the message that set this record (Port.revision); None: unversioned
    revision: int | None = None


def now() -> datetime:
    return datetime.now(UTC)


class PortStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # A record directory that did not exist (a new host name or state_dir on a host
        # that has devices) is no proof that those devices are unwanted.
        self.created = not directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        self._dirty: set[Path] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._idle = threading.Condition(self._lock)
        self._flushing = False
        self._flusher = threading.Thread(target=self._flush_loop, name="l2-store-sync", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closing = True
        self._wake.set()
        self._flusher.join(5)
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _path(self, port_id: UUID) -> Path:
        return self.directory / f"{port_id}.json"

    def put(self, record: PortRecord) -> None:
        final = self._path(record.port_id)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = record.model_dump_json().encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._mark(final)

    def remove(self, port_id: UUID) -> None:
        try:
            self._path(port_id).unlink()
        except FileNotFoundError:
            return
        self._mark(None)

    def _mark(self, path: Path | None) -> None:
        with self._lock:
            if path is not None:
                self._dirty.add(path)
            else:
                self._dirty.add(self.directory)
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything written so far is on disk."""
        self._wake.set()
        with self._lock:
            return self._idle.wait_for(lambda: not self._dirty and not self._flushing, timeout)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._dirty = self._dirty, set()
                self._flushing = bool(batch)
                closing = self._closing
            if batch:
                self._sync(batch)
                with self._lock:
                    self._flushing = False
                    self._idle.notify_all()
            if closing:
                return

    def _sync(self, batch: set[Path]) -> None:
        for path in batch - {self.directory}:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # replaced or removed since: its successor is in a later batch
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.fsync(self._dir_fd)  # the renames and unlinks themselves
        except OSError as err:
            log.error("port_record_sync_failed", directory=str(self.directory), error=str(err))

    def trustworthy(self) -> bool:
        """May reconcile delete on this record's word? Not when it was just created
        or when a record had to be set aside as corrupt."""
        return self.distrust_reason() is None

    def set_aside(self) -> list[str]:
        """The records set aside as corrupt (`*.corrupt`), by name."""
        return sorted(p.name for p in self.directory.glob("*.corrupt"))

    def distrust_reason(self) -> str | None:
        corrupt = self.set_aside()
        if corrupt:
            return f"records set aside as corrupt: {', '.join(corrupt[:5])}"
        if self.created:
            return f"the record directory {self.directory} was created at this start"
        return None

    def load(self) -> dict[UUID, PortRecord]:
        """Every readable record. Leftover temporary files (a write cut short) are removed;
        an unreadable record is set aside as `*.corrupt` and logged, never fatal."""
        out: dict[UUID, PortRecord] = {}
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(".json"):
                continue
            try:
                record = PortRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as err:
                log.error("port_record_unreadable", path=str(path), error=str(err).splitlines()[0])
                path.rename(path.with_suffix(".corrupt"))
                continue
            if path.name != f"{record.port_id}.json":
                log.error("port_record_misnamed", path=str(path), port_id=str(record.port_id))
                continue
            out[record.port_id] = record
        return out
