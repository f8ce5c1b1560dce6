"""A small real HTTP server standing in for agents-controller: canned, contract-shaped answers.

Stdlib `http.server` in a thread on 127.0.0.1 (an ephemeral port). Each test sets the
answer of a route (`reply`), or a handler; `/v1/events` streams server-sent events the
test gives, optionally holding the stream open (for timeouts). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

T0 = datetime(2026, 11, 29, 22, 1, 2, 123456, tzinfo=UTC)


def at(ms: float) -> str:
    return (T0 + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


def port(**kw: Any) -> dict[str, Any]:
    p = {
        "id": str(uuid.uuid4()),
        "network_id": "5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31",
        "network": "net1",
        "mac": "fa:16:3e:00:00:01",
        "fixed_ip": "10.10.0.11",
        "mtu": 1450,
        "state": "pending",
        "device": None,
        "bridge": None,
    }
    p.update(kw)
    return p


def instance(name: str, host: str | None = "node1", **kw: Any) -> dict[str, Any]:
    inst = {
        "uuid": str(uuid.uuid4()),
        "name": name,
        "host": host,
        "flavor": "m1.tiny",
        "vcpus": 1,
        "memory_mb": 128,
        "image": "tiny",
        "state": "building",
        "task": "create",
        "fault": None,
        "created_at": at(0),
        "updated_at": at(0),
        "request_id": "req-1",
        "ports": [port()],
    }
    inst.update(kw)
    return inst


def accepted(
    operation: str, instances: list[dict[str, Any]], request_id: str = "req-1"
) -> dict[str, Any]:
    return {"request_id": request_id, "operation": operation, "instances": instances}


def event(
    eid: int,
    name: str,
    inst: dict[str, Any] | None,
    ms: float,
    *,
    source: str = "controller",
    final: bool = False,
    **kw: Any,
) -> dict[str, Any]:
    ev = {
        "id": eid,
        "at": at(ms),
        "request_id": "req-1",
        "operation_id": "op-" + (inst["uuid"] if inst else "none"),
        "operation": "create",
        "instance_uuid": inst["uuid"] if inst else None,
        "instance": inst["name"] if inst else None,
        "port_id": None,
        "host": inst["host"] if inst else None,
        "source": source,
        "event": name,
        "step": None,
        "state": None,
        "reason": None,
        "final": final,
    }
    ev.update(kw)
    return ev


def build_events(inst: dict[str, Any], first_id: int = 1) -> list[dict[str, Any]]:
    """A successful create of `inst`, hop by hop, as the controller records it."""
    p = inst["ports"][0]
    i = first_id
    return [
        event(i, "api.received", inst, 0, source="api", host=None, state="building"),
        event(i + 1, "casts.sent", inst, 1.2),
        event(i + 2, "port.received", inst, 2.0, source="l2-agent", port_id=p["id"]),
        event(
            i + 3,
            "port.vif_plugged",
            inst,
            3.1,
            source="l2-agent",
            port_id=p["id"],
            step="tap123 in brq456",
        ),
        event(i + 4, "instance.create.start", inst, 4.0, source="compute-agent"),
        event(
            i + 5,
            "instance.create.progress",
            inst,
            8.0,
            source="compute-agent",
            step="guest_started",
        ),
        event(i + 6, "instance.create.end", inst, 11.5, source="compute-agent", state="running"),
        event(i + 7, "operation.done", inst, 12.4, state="running", final=True),
    ]


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    raw: bytes | None = None  # sent as is instead of JSON
    content_type: str = "application/json"


@dataclass
class Stream:
    """What GET /v1/events sends: these events, then hold the stream open `hold` seconds."""

    events: list[dict[str, Any]] = field(default_factory=list)
    hold: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Handler = Callable[[Request], "Reply | Stream | None"]


class FakeController:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[Request] = []
        self.stop = threading.Event()
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                req = Request(
                    method,
                    parts.path,
                    {k: v[-1] for k, v in parse_qs(parts.query).items()},
                    dict(self.headers.items()),
                    json.loads(raw) if raw else None,
                )
                fake.requests.append(req)
                handler = fake.routes.get((method, parts.path))
                answer = (
                    handler(req)
                    if handler
                    else Reply(404, {"error": {"code": "not.routed", "message": parts.path}})
                )
                if answer is None:
                    return  # drop the connection without an answer (a reset)
                if isinstance(answer, Stream):
                    self._stream(answer)
                    return
                data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, stream: Stream) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b": stream open\n\n")
                for ev in stream.events:
                    body = json.dumps(ev)
                    self.wfile.write(f"id: {ev['id']}\nevent: timeline\ndata: {body}\n\n".encode())
                    self.wfile.flush()
                fake.stop.wait(stream.hold)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: shutdown() waits for it, once per test
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeController:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def reply(self, method: str, path: str, body: Any = None, status: int = 200) -> None:
        self.routes[(method, path)] = lambda _req: Reply(status, body)

    def handle(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def stream(self, events: list[dict[str, Any]], hold: float = 0.0) -> None:
        """Every GET /v1/events: the events after `after` (all on replay), then hold."""

        def answer(req: Request) -> Stream:
            after = int(req.query.get("after", 0))
            return Stream([e for e in events if e["id"] > after], hold)

        self.routes[("GET", "/v1/events")] = answer

    def seen(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]


def running() -> Iterator[FakeController]:
    with FakeController() as fake:
        yield fake
