"""The local record of agents agentctl has heard from: how a silent agent is told "down".

Heartbeats only say who is alive now; an agent that died says nothing. So agentctl keeps
the last heartbeat of every agent it ever heard (one JSON file per control exchange under
the state directory) and marks an agent it heard before but not now as down.

Owns that file (read, merge, atomic write) and the pure merge; never talks to the broker.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from common.messages import AgentHeartbeat, Model

AgentState = Literal["up", "down", "silent"]


class AgentStatus(Model):
    """One agent as `agentctl agents` shows it."""

    host: str
    kind: str
    state: AgentState
    version: str
    started_at: datetime
    uptime_s: float
    last_seen: datetime
    counts: dict[str, int] = {}
    # consumers on the agent's RPC queue when it did not answer (None: not checked)
    consumers: int | None = None


def key(kind: str, host: str) -> str:
    return f"{kind}:{host}"


def merge(
    record: dict[str, AgentHeartbeat], heard: Iterable[AgentHeartbeat]
) -> dict[str, AgentHeartbeat]:
    """The record updated with what was heard now (the newest heartbeat of each agent wins)."""
    out = dict(record)
    for hb in heard:
        k = key(hb.kind, hb.host)
        if k not in out or out[k].at <= hb.at:
            out[k] = hb
    return out


class SeenStore:
    """The record file of one deployment (control exchange)."""

    def __init__(self, directory: Path, exchange: str) -> None:
        self.path = directory / f"agents-{exchange}.json"

    def load(self) -> dict[str, AgentHeartbeat]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a damaged record only costs the "down" marks; it is rewritten next time
        out: dict[str, AgentHeartbeat] = {}
        for k, value in raw.items() if isinstance(raw, dict) else ():
            try:
                out[k] = AgentHeartbeat.model_validate(value)
            except ValidationError:
                continue
        return out

    def save(self, record: dict[str, AgentHeartbeat]) -> None:
        """Write atomically, so two agentctl at once never leave half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: hb.model_dump(mode="json") for k, hb in sorted(record.items())}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".agents-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
