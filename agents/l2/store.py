"""The l2-agent's local record of the ports it was asked to wire: one JSON file per port.

A port's file holds the state the last message about it asked for (`present` with the
port, or `absent`: a tombstone). Each write goes to a temporary file in the same
directory, is fsync'ed, renamed over the old file (rename(2) is atomic) and the
directory is fsync'ed, so kill -9 at any moment leaves either the old or the new
record, never a torn one. One file per port keeps a write O(1) however many ports
the host has.

It must not talk to the kernel or the broker; it only persists what the manager decides.
"""

from __future__ import annotations

import os
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


def now() -> datetime:
    return datetime.now(UTC)


class PortStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _path(self, port_id: UUID) -> Path:
        return self.directory / f"{port_id}.json"

    def put(self, record: PortRecord) -> None:
        final = self._path(record.port_id)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        data = record.model_dump_json().encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        os.fsync(self._dir_fd)  # make the rename itself durable

    def remove(self, port_id: UUID) -> None:
        try:
            self._path(port_id).unlink()
        except FileNotFoundError:
            return
        os.fsync(self._dir_fd)

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
