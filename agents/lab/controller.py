"""agents-controller in a lab: a process in the root namespace, its config, its queue, its db.

Owns one controller of one lab: its config (rendered from `etc/controller.conf` with the
lab's listen address, state dir, events queue and database, next to the lab's
shared.conf), the process (the `ExecStart=` of systemd/agents-controller.service, started
in its own session, stdout and stderr to `controller.log`), waiting for `GET /healthz` to
answer 200, small JSON GETs against its API (with the lab's admin token; https verified
against the lab's CA when it has TLS files), and `close()`: SIGTERM (SIGKILL after the
grace), then its durable events queue deleted and a scratch PostgreSQL database dropped.
The SQLite file lives in the lab's directory and goes with it.

Its listen port is chosen free on the first start and kept across restarts, so clients
(and `AGENTS_URL`) stay valid. It must not signal any process but its own.

A replica (`replica_of=`) is a second controller of the same deployment: its own
directory, config dir and port, the first one's events queue and PostgreSQL database;
those stay when a replica closes (the first controller removes them).
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.lab import broker
from agents.lab.configs import merge, render_config, sample, unit_command
from agents.lab.database import ScratchPostgres
from agents.lab.procs import (
    LabError,
    free_port,
    signal_process,
    stop_process,
    tail,
    wait_for,
)

PROG = "agents-controller"


class LabController:
    """One agents-controller of a lab. `start()` it; `close()` removes all it made."""

    def __init__(
        self,
        dir: Path,
        etc: Path,
        events_queue: str,
        postgres: str | None = None,
        settings: Mapping[str, object] | None = None,
        port: int | None = None,
        replica_of: LabController | None = None,
        transport_url: str = broker.TRANSPORT_URL,
        tokens_file: Path | None = None,
        token: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.dir = dir
        # The API's token file ([controller] tokens_file) and the admin token the lab's
        # own reads send; None with `auth = none` in settings.
        self.tokens_file = tokens_file
        self.token = token
        # With tls_cert_file/tls_key_file in settings the API is https, verified with this.
        self.ca_file = ca_file
        self.transport_url = transport_url
        self.etc = etc
        self.events_queue = events_queue
        self.postgres_admin = postgres
        self.settings = dict(settings or {})
        self.port = port
        self.database: ScratchPostgres | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.replica_of = replica_of
        if replica_of is not None:
            if replica_of.database is None:
                raise LabError(
                    "a controller replica needs the first controller on PostgreSQL"
                    " (SQLite serves one controller)"
                )
            self.database = replica_of.database
            self.events_queue = replica_of.events_queue
            self.tokens_file, self.token = replica_of.tokens_file, replica_of.token
            self.ca_file = replica_of.ca_file

    @property
    def conf(self) -> Path:
        return self.etc / "controller.conf"

    @property
    def log(self) -> Path:
        return self.dir / "controller.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise LabError("the controller was never started: it has no URL yet")
        scheme = "https" if self.settings.get("tls_cert_file") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _open(self, path: str, timeout: float) -> Any:
        """urlopen of `path` on the API, with the lab's token (and CA for https)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    @property
    def database_url(self) -> str:
        """What the controller is configured with ('' = SQLite under its state dir)."""
        return self.database.url if self.database else ""

    def command(self) -> list[str]:
        """As systemd would run it: the unit's command line, /etc/agents moved to the lab."""
        return unit_command(PROG, self.etc)

    def _configure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.postgres_admin and self.database is None:
            self.database = ScratchPostgres.create(self.postgres_admin)
        values = merge(
            {
                "DEFAULT": {"state_dir": self.dir / "state", "log_format": "json"},
                "controller": {
                    "listen": f"127.0.0.1:{self.port}",
                    "database_url": self.database_url,
                    "events_queue": self.events_queue,
                    # agents of a lab beat every second: a silent one is down soon
                    "agent_down_time": 6,
                    "stop_grace": 5,
                    **({"tokens_file": self.tokens_file} if self.tokens_file else {}),
                },
            },
            {"controller": self.settings},
        )
        self.conf.write_text(render_config(sample("controller.conf"), values))

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 60) -> None:
        """Start the process and wait until /healthz says ok (database and broker)."""
        if self.running():
            raise LabError(f"{PROG} is already running (pid {self.proc and self.proc.pid})")
        fixed = self.port is not None
        for _attempt in range(3):
            if not fixed:
                self.port = free_port()
            self._configure()
            with self.log.open("ab") as fh:
                self.proc = subprocess.Popen(
                    self.command(),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                wait_for(self._healthy, timeout, 0.1, what=f"{PROG} /healthz to answer 200")
                return
            except _Exited as err:
                if fixed or "cannot listen" not in str(err):
                    raise LabError(str(err)) from None
            except TimeoutError as err:
                raise LabError(f"{err}\n{tail(self.log)}") from None
        raise LabError(f"{PROG} found no free port to listen on:\n{tail(self.log)}")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise _Exited(f"{PROG} exited {self.proc.returncode}:\n{tail(self.log)}")
        try:
            with self._open("/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20) -> int:
        """Signal it (SIGTERM: graceful; SIGKILL: a crash) and wait; its exit status."""
        if self.proc is None:
            raise LabError(f"{PROG} was never started")
        status, killed = stop_process(self.proc, sig, grace)
        if killed and sig != signal.SIGKILL:
            raise LabError(f"{PROG} ignored signal {sig} for {grace}s:\n{tail(self.log)}")
        return status

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def close(self) -> None:
        """Stop the process, delete its events queue, drop a scratch database (a
        replica leaves both to the first controller)."""
        try:
            if self.proc is not None:
                with contextlib.suppress(Exception):
                    stop_process(self.proc, signal.SIGTERM, 20)
                signal_process(self.proc, signal.SIGKILL)
        finally:
            if self.replica_of is None:
                try:
                    broker.delete([self.events_queue], url=self.transport_url)
                finally:
                    if self.database is not None:
                        self.database.drop()
                        self.database = None

    # ------------------------------------------------------------------ API reads

    def get(self, path: str, timeout: float = 10) -> Any:
        """GET `path` of the API; its JSON, or LabError with the error body."""
        try:
            with self._open(path, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise LabError(f"GET {path}: {err.code} {err.read().decode(errors='replace')}") from err
        except OSError as err:
            raise LabError(f"GET {path}: {err}") from err

    def hosts(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The controller's host table: (host, kind) -> entry; empty while it is down."""
        if not self.running():
            return {}
        try:
            entries = self.get("/v1/hosts", timeout=5)
        except LabError:
            return {}
        return {(e["host"], e["kind"]): e for e in entries}

    def request_durations(self) -> list[tuple[str, str, float]]:
        """(method, path, duration_ms) of every request line in its log."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == "request" and "duration_ms" in rec:
                    found.append((rec["method"], rec["path"], float(rec["duration_ms"])))
        return found

    def wait_gone(self, timeout: float = 10) -> None:
        """Wait until nothing answers on its port any more (after stop/kill)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._open("/healthz", timeout=1).close()
            except (OSError, urllib.error.URLError):
                return
            time.sleep(0.1)
        raise LabError(f"{self.url} still answers after {timeout}s")


class _Exited(Exception):
    """The controller process ended before it was healthy."""
