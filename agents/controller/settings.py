"""agents-controller's settings: the shared sections plus [controller].

Pure: validation only. The database URL is checked for a driver this project ships
(SQLite, PostgreSQL through psycopg 3) so a typo fails at start, naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from common.config import BaseConfig, ListenAddress, Section

Seconds = Annotated[float, Field(gt=0, le=86400)]


def _check_database_url(value: str) -> str:
    if value == "":
        return value
    scheme = urlsplit(value).scheme
    if scheme not in ("sqlite", "postgresql", "postgresql+psycopg"):
        raise ValueError(
            "must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
            "(postgresql:// is read as postgresql+psycopg://)"
        )
    return value


DatabaseUrl = Annotated[str, AfterValidator(_check_database_url)]


class ControllerSettings(Section):
    # Where the API listens; loopback by default.
    listen: ListenAddress = "127.0.0.1:8780"
    # tokens: every request but /healthz needs `Authorization: Bearer <token>` of a token
    # in tokens_file (docs/security.md); none: the API is open (a lab, a test).
    auth: Literal["tokens", "none"] = "tokens"
    # Lines `ROLE NAME sha256:HEX`, mode 0600; `agents-controller token add` writes it.
    tokens_file: Path = Path("/etc/agents/tokens")
    # Both or neither: the API serves HTTPS with this certificate chain and key (PEM).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Empty: a SQLite file <state_dir>/controller/controller.sqlite.
    database_url: DatabaseUrl = ""
    # An agent whose last heartbeat is older than this is `down` (nova: service_down_time).
    agent_down_time: Seconds = 75.0
    # An operation with no news from its host for this long is cast again (same ids:
    # the agents are idempotent by uuid) ...
    redrive_after: Seconds = 20.0
    # ... at most this many times ...
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    # ... and fails with a named reason once this much time has passed since it was
    # asked for. Keep it above the agents' vif_plugging_timeout.
    operation_timeout: Seconds = 600.0
    # How often the reconciler looks for stalled operations.
    reconcile_interval: Seconds = 2.0
    # How often each live compute host is asked what it has (list_instances) and the
    # observed states made to match: a guest gone or stopped behind the agents' back
    # shows as error / shutoff with a fault. 0 disables it.
    host_sync_interval: Annotated[float, Field(ge=0, le=86400)] = 30.0
    # Bound of each host's answer in that sync; a host that does not answer in time is
    # skipped until the next pass.
    host_sync_timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Bound of a proxied RPC call (console log).
    call_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Upper bound of `count` in one create request.
    max_count: Annotated[int, Field(ge=1, le=1000)] = 100
    # How long SIGTERM waits for requests in flight.
    stop_grace: Annotated[float, Field(ge=0, le=600)] = 10.0
    # Name of the durable queue the controller consumes every agent event from; replicas
    # of one deployment share it.
    events_queue: str = "agents-controller.events"
    # Kept this many days in the timeline, then pruned.
    events_retention_days: Annotated[float, Field(gt=0, le=3650)] = 14.0

    @model_validator(mode="after")
    def _tls_pair(self) -> ControllerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self


class ControllerConfig(BaseConfig):
    controller: ControllerSettings = ControllerSettings()

    def database_url(self) -> str:
        url = self.controller.database_url
        if not url:
            path = Path(self.DEFAULT.state_dir) / "controller" / "controller.sqlite"
            return f"sqlite:///{path}"
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url
