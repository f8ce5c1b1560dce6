#!/usr/bin/env python3
"""Malformed messages on the wire, by the thousand: both agents and the controller.

A lab (agents/lab: agents-controller on SQLite, one host with its l2-agent and
compute-agent as processes) receives `--total` malformed messages published straight
onto the broker (kombu, no oslo client in the way), spread over four targets:

- `compute.<host>` and `l2-agent.<host>`: the agents' RPC queues;
- `vif_events.<host>.info`: the vif events the compute-agent consumes (the controller's
  queue gets a copy too: it binds `vif_events.#`);
- `<events_topic>.<host>.info`: the agents' events, into the controller's own queue.

Kinds (`KINDS`): binary garbage, text that is not JSON, JSON of random shapes, the oslo
envelope broken (`oslo.message` not JSON, not a string, missing), an oslo version no one
speaks, unknown methods, internal method names (a manager's public helpers), known
methods with a wrong RPC version, arguments of the wrong shape, payload envelopes of
unknown schemas or versions or with bad fields; on the notification targets: no
event_type, a payload that does not validate, an event whose payload names another host
than its routing key; and bodies of every size up to the broker's frame_max (sizes are
drawn so that a few per cent are large). Then the bench waits until every queue is
drained, checks that each daemon still answers (the controller's /healthz, both agents'
`ping` over RPC, their processes alive), that a build still succeeds end to end, and
counts how each daemon logged what it got (named lines, tracebacks).

Usage (root): .venv/bin/python bench/fuzz_wire.py [--total 10000] [--seed N] [--json]
Exit status 0 only when every check passed. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.lab.broker import TRANSPORT_URL  # noqa: E402
from agents.lab.host import LabHost  # noqa: E402
from agents.lab.lab import Lab  # noqa: E402
from agents.lab.procs import wait_for  # noqa: E402
from common.config import BaseConfig, MessagingSettings, load  # noqa: E402
from common.rpc import (  # noqa: E402
    COMPUTE_TOPIC,
    L2_TOPIC,
    Messaging,
    agent_events_topic,
    connection,
    queue_state,
    vif_events_topic,
)

# RabbitMQ's frame_max (3.10 default; `rabbitmqctl environment`): the largest frame. A
# message body beyond it is split into several frames, up to max_message_size (128 MiB).
FRAME_MAX = 131_072
COMPUTE_METHODS = [
    "build_instance", "delete_instance", "reboot_instance", "ping", "report_state",
    "list_instances", "get_instance", "get_console_log",
]  # fmt: skip
L2_METHODS = ["port_created", "port_updated", "port_deleted", "ping", "report_state", "list_ports"]
# public attributes of the endpoints that are not RPC methods (reachable names all the same)
INTERNAL = ["drain", "reconcile", "apply_desired", "healthy", "uptime", "emit_heartbeat",
            "on_vif_event", "start", "stop", "close", "__init__", "_delete", "intake"]  # fmt: skip
SCHEMAS = ["build_instance", "port_created", "vif_event", "instance_event", "agent_heartbeat",
           "no_such_schema", "", "message_rejected"]  # fmt: skip
EVENT_TYPES = ["instance.create.end", "port.vif_plugged", "agent.heartbeat",
               "agent.message_rejected", "instance.delete.end", "no.such.event"]  # fmt: skip

Body = tuple[bytes, str]  # (bytes, content type)


def _size(rng: random.Random) -> int:
    """Mostly small, some medium, a few up to frame_max (and a few just beyond)."""
    r = rng.random()
    if r < 0.80:
        return rng.randint(0, 1024)
    if r < 0.95:
        return rng.randint(1024, 16 * 1024)
    if r < 0.995:
        return rng.randint(16 * 1024, FRAME_MAX - 512)
    return rng.randint(FRAME_MAX, 2 * FRAME_MAX)


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice('abcdefghij{}[]":,.0123 \\\u00e9\u2603') for _ in range(n))


def _shape(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value."""
    r = rng.random()
    if depth > 3 or r < 0.3:
        leaves = [None, True, False, rng.randint(-(2**63), 2**63), rng.random() * 1e300]
        return rng.choice([*leaves, _text(rng, rng.randint(0, 40)), "", -0.0])
    if r < 0.65:
        return [_shape(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["method", "args", "payload", "schema", "version", "data", "host", "oslo.message",
            "event_type", "priority", _text(rng, 8)]  # fmt: skip
    return {rng.choice(keys): _shape(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def _pad(doc: Any, rng: random.Random) -> Any:
    """Grow `doc` toward a drawn size with a junk field (where it is an object)."""
    target = _size(rng)
    if isinstance(doc, dict) and target > 64:
        doc = {**doc, "junk": "j" * target}
    return doc


def _oslo(inner: Any, version: str = "2.0") -> bytes:
    body = {"oslo.version": version, "oslo.message": json.dumps(inner)}
    return json.dumps(body).encode()


def _envelope(rng: random.Random, host: str) -> dict[str, Any]:
    schema = rng.choice(SCHEMAS)
    data = _shape(rng) if rng.random() < 0.5 else {"host": host, "request_id": _text(rng, 5)}
    return {"schema": schema, "version": rng.choice(["1.0", "1.1", "2.0", "99", "", None]),
            "data": data}  # fmt: skip


def _cast(method: str, args: Any, version: Any = "1.0") -> dict[str, Any]:
    return {
        "method": method,
        "args": args,
        "namespace": None,
        "version": version,
        "_unique_id": uuid.uuid4().hex,
        "_context_request_id": f"req-{uuid.uuid4()}",
    }


# ------------------------------------------------------------------ kinds: RPC


def rpc_garbage(rng: random.Random, host: str, methods: list[str]) -> Body:
    return rng.randbytes(_size(rng)), rng.choice(["application/json", "application/octet-stream"])


def rpc_not_json(rng: random.Random, host: str, methods: list[str]) -> Body:
    return _text(rng, _size(rng)).encode(), "application/json"


def rpc_json_shape(rng: random.Random, host: str, methods: list[str]) -> Body:
    return json.dumps(_pad(_shape(rng), rng)).encode(), "application/json"


def rpc_envelope_broken(rng: random.Random, host: str, methods: list[str]) -> Body:
    inner = rng.choice(["{not json", 42, None, [1, 2], _text(rng, _size(rng)), {"method": "ping"}])
    doc: dict[str, Any] = {"oslo.version": "2.0"}
    if rng.random() < 0.8:
        doc["oslo.message"] = inner
    return json.dumps(doc).encode(), "application/json"


def rpc_oslo_version(rng: random.Random, host: str, methods: list[str]) -> Body:
    inner = _cast(rng.choice(methods), {})
    return _oslo(inner, rng.choice(["1.0", "3.0", "", "99.9"])), "application/json"


def rpc_unknown_method(rng: random.Random, host: str, methods: list[str]) -> Body:
    method = rng.choice([_text(rng, rng.randint(0, 30)), "frobnicate", "", 7, None, ["ping"]])
    return _oslo(_pad(_cast(method, {}), rng)), "application/json"  # type: ignore[arg-type]


def rpc_internal_method(rng: random.Random, host: str, methods: list[str]) -> Body:
    args = rng.choice([{}, {"grace": 0}, {"desired": {}}, {"payload": {}}, {"event_type": "x"}])
    return _oslo(_cast(rng.choice(INTERNAL), args)), "application/json"


def rpc_wrong_version(rng: random.Random, host: str, methods: list[str]) -> Body:
    version = rng.choice(["2.0", "99.0", "1.99", "x", "", None, 3])
    return _oslo(_cast(rng.choice(methods), {}, version)), "application/json"


def rpc_bad_args(rng: random.Random, host: str, methods: list[str]) -> Body:
    args = rng.choice(
        [[1, 2], "args", None, 5, {"surprise": 1}, {"payload": 1, "extra": 2}, _shape(rng)]
    )
    return _oslo(_pad(_cast(rng.choice(methods), args), rng)), "application/json"


def rpc_bad_payload(rng: random.Random, host: str, methods: list[str]) -> Body:
    payload = _pad(_envelope(rng, host), rng)
    return _oslo(_cast(rng.choice(methods), {"payload": payload})), "application/json"


RPC_KINDS: dict[str, Callable[[random.Random, str, list[str]], Body]] = {
    "garbage": rpc_garbage,
    "not_json": rpc_not_json,
    "json_shape": rpc_json_shape,
    "envelope_broken": rpc_envelope_broken,
    "oslo_version": rpc_oslo_version,
    "unknown_method": rpc_unknown_method,
    "internal_method": rpc_internal_method,
    "wrong_version": rpc_wrong_version,
    "bad_args": rpc_bad_args,
    "bad_payload": rpc_bad_payload,
}

# ------------------------------------------------------------------ kinds: notifications


def _notification(event_type: Any, payload: Any, priority: str = "INFO") -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "publisher_id": "fuzz",
        "event_type": event_type,
        "priority": priority,
        "payload": payload,
        "timestamp": str(datetime.now(UTC).replace(tzinfo=None)),
        "_unique_id": uuid.uuid4().hex,
        "_context_request_id": f"req-{uuid.uuid4()}",
    }


def ev_garbage(rng: random.Random, host: str, other: str) -> Body:
    return rng.randbytes(_size(rng)), rng.choice(["application/json", "application/octet-stream"])


def ev_not_json(rng: random.Random, host: str, other: str) -> Body:
    return _text(rng, _size(rng)).encode(), "application/json"


def ev_json_shape(rng: random.Random, host: str, other: str) -> Body:
    return json.dumps(_pad(_shape(rng), rng)).encode(), "application/json"


def ev_envelope_broken(rng: random.Random, host: str, other: str) -> Body:
    doc = {"oslo.version": "2.0", "oslo.message": rng.choice(["{", 1, None, [], "[]"])}
    return json.dumps(doc).encode(), "application/json"


def ev_no_event_type(rng: random.Random, host: str, other: str) -> Body:
    msg = _notification("x", _envelope(rng, host))
    del msg["event_type"]
    return _oslo(_pad(msg, rng)), "application/json"


def ev_bad_payload(rng: random.Random, host: str, other: str) -> Body:
    msg = _notification(rng.choice(EVENT_TYPES), _pad(_envelope(rng, host), rng))
    return _oslo(msg), "application/json"


def ev_other_host(rng: random.Random, host: str, other: str) -> Body:
    """A valid event whose payload speaks for another host than the routing key's."""
    payload = {
        "schema": "vif_event",
        "version": "1.1",
        "data": {"host": other, "port_id": str(uuid.uuid4()), "reason": "plugged"},
    }
    return _oslo(_notification("port.vif_plugged", payload)), "application/json"


def ev_wrong_types(rng: random.Random, host: str, other: str) -> Body:
    msg = _notification(rng.choice([7, None, [], {}]), rng.choice([7, "x", [], None]))
    msg["priority"] = rng.choice([None, 5, "NOPE", ""])
    return _oslo(msg), "application/json"


EVENT_KINDS: dict[str, Callable[[random.Random, str, str], Body]] = {
    "garbage": ev_garbage,
    "not_json": ev_not_json,
    "json_shape": ev_json_shape,
    "envelope_broken": ev_envelope_broken,
    "no_event_type": ev_no_event_type,
    "bad_payload": ev_bad_payload,
    "other_host": ev_other_host,
    "wrong_types": ev_wrong_types,
}

# log events that name a refused or unreadable message, per daemon
NAMED = (
    "rpc_message_refused",
    "rpc_message_unreadable",
    "message_rejected",
    "notification_unreadable",
    "notification_endpoint_failed",
    "vif_event_invalid",
    "vif_event_rejected",
    "vif_event_other_host",
    "event_unreadable",
    "event_dropped",
    "event_host_mismatch",
)


@dataclass
class Result:
    total: int = 0
    bytes: int = 0
    largest: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # "target/kind"
    publish_s: float = 0.0
    drain_s: float = 0.0
    logged: dict[str, Counter[str]] = field(default_factory=dict)
    tracebacks: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    build_s: float | None = None

    def by_target(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for key, n in self.sent.items():
            out[key.split("/")[0]] += n
        return out

    def report(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "bytes": self.bytes,
            "largest": self.largest,
            "by_target": dict(self.by_target()),
            "by_target_kind": dict(sorted(self.sent.items())),
            "publish_s": round(self.publish_s, 2),
            "drain_s": round(self.drain_s, 2),
            "logged": {d: dict(c) for d, c in self.logged.items()},
            "tracebacks": self.tracebacks,
            "build_s": self.build_s,
            "problems": self.problems,
        }


def publish(lab: Lab, node: LabHost, total: int, seed: int, result: Result) -> None:
    """`total` malformed messages, round robin over the four targets, kinds drawn."""
    rng = random.Random(seed)
    settings = MessagingSettings(transport_url=TRANSPORT_URL)
    events_topic = load(BaseConfig, [lab.write_shared()]).messaging.events_topic
    host = node.host
    ev_settings = MessagingSettings(events_topic=events_topic)
    targets: list[tuple[str, str, Callable[[], Body]]] = [
        ("compute", f"{COMPUTE_TOPIC}.{host}",
         lambda: RPC_KINDS[k](rng, host, COMPUTE_METHODS)),
        ("l2", f"{L2_TOPIC}.{host}", lambda: RPC_KINDS[k](rng, host, L2_METHODS)),
        ("vif", f"{vif_events_topic(host)}.info", lambda: EVENT_KINDS[k](rng, host, "node-x")),
        ("events", f"{agent_events_topic(ev_settings, host)}.info",
         lambda: EVENT_KINDS[k](rng, host, "node-x")),
    ]  # fmt: skip
    started = time.monotonic()
    with connection(settings, 10) as conn:
        channel = conn.channel()
        for i in range(total):
            name, key, make = targets[i % len(targets)]
            kinds = RPC_KINDS if name in ("compute", "l2") else EVENT_KINDS
            k = rng.choice(list(kinds))
            body, ctype = make()
            message = channel.prepare_message(
                body, content_type=ctype, content_encoding="utf-8" if "json" in ctype else "binary"
            )
            channel.basic_publish(message, exchange=lab.exchange, routing_key=key)
            result.sent[f"{name}/{k}"] += 1
            result.total += 1
            result.bytes += len(body)
            result.largest = max(result.largest, len(body))
    result.publish_s = time.monotonic() - started


def drained(node: LabHost, queues: list[str], result: Result, timeout: float) -> None:
    settings = MessagingSettings(transport_url=TRANSPORT_URL)
    started = time.monotonic()

    def empty() -> bool:
        for name in ("compute-agent", "l2-agent"):
            node.check_alive(name)
        return all(queue_state(settings, q).messages == 0 for q in queues)

    wait_for(empty, timeout, 0.5, what=f"the queues {queues} to drain")
    result.drain_s = time.monotonic() - started


def count_logs(lab: Lab, node: LabHost, result: Result) -> None:
    files = {"compute-agent": node.log_dir / "compute-agent.log",
             "l2-agent": node.log_dir / "l2-agent.log"}  # fmt: skip
    if lab.controller is not None:
        files["controller"] = lab.controller.log
    for daemon, path in files.items():
        counts: Counter[str] = Counter()
        tracebacks = 0
        for line in path.read_text(errors="replace").splitlines():
            if "Traceback" in line:
                tracebacks += 1
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line).get("event", "")
            except ValueError:
                continue
            if event in NAMED or event.endswith(("_refused", "_unreadable", "_invalid")):
                counts[event] += 1
        result.logged[daemon] = counts
        result.tracebacks[daemon] = tracebacks


def check_health(lab: Lab, node: LabHost, result: Result) -> None:
    assert lab.controller is not None
    try:
        lab.controller.get("/healthz", timeout=5)
    except Exception as err:
        result.problems.append(f"controller /healthz: {err}")
    settings = load(BaseConfig, [lab.write_shared()]).messaging
    messaging = Messaging(settings)
    try:
        for topic in (COMPUTE_TOPIC, L2_TOPIC):
            try:
                messaging.rpc_client(topic, node.host, timeout=10).call("ping")
            except Exception as err:
                result.problems.append(f"{topic} ping: {err}")
    finally:
        messaging.close()
    for agent in ("compute-agent", "l2-agent"):
        if not node.running(agent):
            result.problems.append(f"{agent} is not running")


def check_build(lab: Lab, node: LabHost, result: Result) -> None:
    started = time.monotonic()
    out = lab.agentctl(
        "--json", "send", "build", "--host", node.host, "--name", "after-fuzz", "--wait",
        "--network", "net1", "--timeout", "60",
    )  # fmt: skip
    if out.returncode != 0:
        tail = (out.stdout + out.stderr)[-800:]
        result.problems.append(f"build after the fuzz failed: {tail}")
        return
    doc = json.loads(out.stdout.splitlines()[-1])
    states = [i.get("state") for i in doc.get("instances", [])]
    if states != ["running"]:
        result.problems.append(f"build after the fuzz: states {states}")
    result.build_s = round(time.monotonic() - started, 2)


def run(lab: Lab, node: LabHost, total: int, seed: int = 1, drain_timeout: float = 600) -> Result:
    """Publish, wait for the queues to drain, then check health, a build and the logs."""
    result = Result()
    assert lab.controller is not None
    queues = [
        f"{COMPUTE_TOPIC}.{node.host}",
        f"{L2_TOPIC}.{node.host}",
        f"{vif_events_topic(node.host)}.info",
        lab.controller.events_queue,
    ]
    publish(lab, node, total, seed, result)
    try:
        drained(node, queues, result, drain_timeout)
    except Exception as err:
        result.problems.append(f"not drained: {err}")
    check_health(lab, node, result)
    check_build(lab, node, result)
    count_logs(lab, node, result)
    for daemon, n in result.tracebacks.items():
        if n:
            result.problems.append(f"{daemon} logged {n} traceback(s)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="the report as one JSON document")
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs into this dir")
    args = parser.parse_args(argv)
    with Lab.create(prefix="fz-") as lab:
        lab.start_controller()
        node = lab.add_host("node1")
        result = run(lab, node, args.total, args.seed)
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            logs = [*node.log_dir.glob("*.log")]
            if lab.controller is not None:
                logs.append(lab.controller.log)
            for log in logs:
                shutil.copy(log, args.keep_logs / log.name)
    report = result.report()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"sent {result.total} malformed messages ({result.bytes / 1e6:.1f} MB,"
              f" largest {result.largest} B) in {result.publish_s:.1f}s;"
              f" drained in {result.drain_s:.1f}s")  # fmt: skip
        for target, n in sorted(result.by_target().items()):
            kinds = {k.split("/")[1]: v for k, v in result.sent.items() if k.startswith(target)}
            print(f"  {target:8} {n:6}  {dict(sorted(kinds.items()))}")
        for daemon, counts in result.logged.items():
            print(f"  logged by {daemon}: {dict(counts)}; tracebacks {result.tracebacks[daemon]}")
        print(f"  build after: {result.build_s}s")
        for problem in result.problems:
            print(f"PROBLEM {problem}")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
