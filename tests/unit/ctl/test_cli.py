"""The command line against a real HTTP server playing the controller (tests/unit/ctl/fakeapi).

Covers each command's request and output, --wait over the event stream (success, failure,
timeout, a cut stream), the error body -> exit code mapping, a controller that is down,
answers that are not the contract's JSON, --json, completion and help.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agents.ctl import cli
from agents.ctl.errors import (
    ApiError,
    BadResponse,
    ConfigError,
    ControllerTimeout,
    ControllerUnreachable,
    CtlError,
    HostMismatch,
    InvalidInput,
)
from agents.ctl.parser import build_parser
from agents.lab.procs import free_ports
from tests.unit.ctl.conftest import RunCli
from tests.unit.ctl.fakeapi import (
    FakeController,
    Reply,
    Request,
    accepted,
    build_events,
    event,
    instance,
)

COMMANDS = [
    ["send"],
    ["send", "build"],
    ["send", "delete"],
    ["send", "reboot"],
    ["list"],
    ["show"],
    ["console-log"],
    ["ports"],
    ["watch"],
    ["agents"],
    ["completion"],
]


def dead_urls(n: int) -> list[str]:
    """`n` different URLs on which nothing listens: connecting is refused at once."""
    return [f"http://127.0.0.1:{port}" for port in free_ports(n)]


def dead_url() -> str:
    return dead_urls(1)[0]


def error_body(code: str, message: str, **kw: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message, **kw}}


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "agentctl " in text
    assert "exit codes:" in text and "controller unreachable" in text


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["send", "delete"])  # NAME|UUID is required
    assert exit_.value.code == cli.EXIT_USAGE
    assert "NAME|UUID" in capsys.readouterr().err


def test_host_is_optional_now_and_json_debug_go_anywhere() -> None:
    parser = build_parser()
    assert parser.parse_args(["send", "build"]).host is None
    assert parser.parse_args(["send", "delete", "web"]).host is None
    assert parser.parse_args(["--json", "list"]).json is True
    assert parser.parse_args(["list", "--json"]).json is True
    assert parser.parse_args(["list"]).json is False
    assert parser.parse_args(["send", "build", "--debug"]).debug is True


def test_version_is_read_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("agentctl ")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput(field="--timeout", value=0, problem="p"), 2),
        (ConfigError(file="f", section="s", key="k", value="v", problem="p"), 2),
        (HostMismatch(ref="web", host="a", actual="b"), 2),
        (ControllerUnreachable(url="u", problem="p"), 3),
        (ControllerTimeout(url="u", request="GET /", timeout=1), 4),
        (BadResponse(request="GET /", problem="p"), 1),
    ],
)
def test_exit_codes_of_local_errors(error: CtlError, code: int) -> None:
    assert cli.exit_code(error) == code


@pytest.mark.parametrize(
    ("api_code", "status", "exit_code"),
    [
        ("request.invalid", 422, 2),
        ("flavor.unknown", 422, 2),
        ("network.unknown", 422, 2),
        ("image.unknown", 422, 2),
        ("instance.not_found", 404, 2),
        ("instance.ambiguous", 409, 2),
        ("idempotency.conflict", 409, 2),
        ("operation.not_found", 404, 2),
        ("host.unavailable", 409, 5),
        ("host.not_found", 404, 5),
        ("scheduler.no_host", 409, 5),
        ("host.no_capacity", 409, 5),
        ("agent.timeout", 504, 4),
        ("network.exhausted", 409, 1),
        ("instance.busy", 409, 1),
        ("service.unavailable", 503, 1),
        ("something.new", 500, 1),
    ],
)
def test_error_bodies_map_to_exit_codes(
    api: FakeController, agentctl: RunCli, api_code: str, status: int, exit_code: int
) -> None:
    api.reply("POST", "/v1/instances", error_body(api_code, f"it is {api_code}"), status)
    run = agentctl("send", "build")
    assert run.code == exit_code, run.err
    assert run.err == f"agentctl: error: it is {api_code}\n"
    assert cli.exit_code(ApiError(status=status, code=api_code, message="m")) == exit_code


def test_error_with_valid_choices_lists_them_and_json_has_the_code(
    api: FakeController, agentctl: RunCli
) -> None:
    body = error_body(
        "flavor.unknown",
        "unknown flavor 'big'",
        field="flavor",
        value="big",
        valid=["m1.tiny", "m1.small"],
    )
    api.reply("POST", "/v1/instances", body, 422)
    run = agentctl("--json", "send", "build", "--flavor", "big")
    assert run.code == 2
    assert run.err == "agentctl: error: unknown flavor 'big'; valid: m1.tiny, m1.small\n"
    data = json.loads(run.out)
    assert data == {
        "error": "unknown flavor 'big'",
        "code": "flavor.unknown",
        "type": "ApiError",
        "exit_code": 2,
        "field": "flavor",
        "value": "big",
        "valid": ["m1.tiny", "m1.small"],
    }
    assert api.seen("POST", "/v1/instances")[0].body["flavor"] == "big"


# --------------------------------------------------------------------------- send build


def test_build_wait_success_prints_plan_progress_and_summary(
    api: FakeController, agentctl: RunCli
) -> None:
    inst = instance("web")
    api.reply("POST", "/v1/instances", accepted("create", [inst]), 202)
    api.stream(build_events(inst))
    run = agentctl(
        "send", "build", "--name", "web", "--network", "net1", "--network", "prov", "--wait"
    )
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].split() == ["NAME", "UUID", "HOST", "FLAVOR", "NETWORK", "IP", "MAC"]
    row = ["web", inst["uuid"], "node1", "m1.tiny", "net1", "10.10.0.11", "fa:16:3e:00:00:01"]
    assert lines[1].split() == row
    assert lines[2:6] == [
        "  web port_wired tap123 in brq456",
        "  web create_started",
        "  web guest_started",
        "  web running 12 ms",
    ]
    assert lines[6].startswith("create: 1 done, 0 failed, 0 unfinished in ")
    (post,) = api.seen("POST", "/v1/instances")
    assert post.body == {"count": 1, "name": "web", "networks": ["net1", "prov"]}
    assert len(post.headers["Idempotency-Key"]) >= 32
    (stream,) = api.seen("GET", "/v1/events")
    assert stream.query["request_id"] == "req-1" and stream.query["replay"] == "1"


def test_build_gives_host_only_when_asked(api: FakeController, agentctl: RunCli) -> None:
    api.reply("POST", "/v1/instances", accepted("create", [instance("a", host="node2")]), 202)
    run = agentctl("send", "build", "--host", "node2", "--count", "1", "--flavor", "m1.small")
    assert run.code == 0, run.err
    assert api.seen("POST", "/v1/instances")[0].body == {
        "count": 1,
        "flavor": "m1.small",
        "host": "node2",
    }
    assert "create accepted (req-1); follow it with: agentctl show a --timeline" in run.out
    assert not api.seen("GET", "/v1/events")  # no --wait: no stream


def test_build_wait_failure_exits_1_with_the_reason(api: FakeController, agentctl: RunCli) -> None:
    good, bad = instance("web-1"), instance("web-2")
    api.reply("POST", "/v1/instances", accepted("create", [good, bad]), 202)
    events = build_events(good)
    events += [
        event(20, "instance.create.start", bad, 5, source="compute-agent"),
        event(21, "instance.create.error", bad, 9, source="compute-agent", reason="no image"),
        event(22, "operation.error", bad, 10, state="error", reason="no image", final=True),
    ]
    api.stream(events)
    run = agentctl("send", "build", "--name", "web", "--count", "2", "--wait")
    assert run.code == 1, run.err
    assert "  web-2 create_error no image" in run.out
    assert "  web-2 failed no image" in run.out
    assert "create: 1 done, 1 failed, 0 unfinished" in run.out
    assert f"  web-2 ({bad['uuid']}): no image" in run.out


def test_build_wait_timeout_exits_4_in_time(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("slow")
    api.reply("POST", "/v1/instances", accepted("create", [inst]), 202)
    api.stream(build_events(inst)[:5], hold=5.0)  # started, never final, stream kept open
    started = time.monotonic()
    run = agentctl("send", "build", "--wait", "--timeout", "0.4")
    elapsed = time.monotonic() - started
    assert run.code == 4, run.err
    assert elapsed < 2.0
    assert "0 done, 0 failed, 1 unfinished" in run.out
    assert "slow (" in run.out and "no final event within 0.4s" in run.out


def test_build_wait_reconnects_after_a_cut_stream(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("web")
    events = build_events(inst)
    api.reply("POST", "/v1/instances", accepted("create", [inst]), 202)
    served: list[Request] = []

    def answer(req: Request) -> object:
        from tests.unit.ctl.fakeapi import Stream

        served.append(req)
        # the first stream is cut half way; the next one goes on after the last id seen
        after = int(req.query.get("after", 0))
        return Stream([e for e in events if e["id"] > after][:4])

    api.handle("GET", "/v1/events", answer)  # type: ignore[arg-type]
    run = agentctl("send", "build", "--wait", "--timeout", "5")
    assert run.code == 0, run.err
    assert run.out.count("web port_wired") == 1 and "web running 12 ms" in run.out
    assert served[0].query.get("replay") == "1" and "after" not in served[0].query
    assert served[1].query["after"] == "4" and "replay" not in served[1].query


def test_build_json_wait_prints_update_lines_then_a_summary(
    api: FakeController, agentctl: RunCli
) -> None:
    inst = instance("web")
    api.reply("POST", "/v1/instances", accepted("create", [inst]), 202)
    api.stream(build_events(inst))
    run = agentctl("--json", "send", "build", "--wait")
    assert run.code == 0, run.err
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert [d["event"] for d in docs[:-1]] == [
        "port_wired",
        "create_started",
        "guest_started",
        "running",
    ]
    assert docs[-2]["final"] is True and docs[-2]["detail"] == "12 ms"
    summary = docs[-1]
    assert summary["ok"] is True and summary["timed_out"] is False
    assert summary["request_id"] == "req-1" and summary["operation"] == "create"
    (one,) = summary["instances"]
    assert one["uuid"] == inst["uuid"] and one["state"] == "running"
    assert one["elapsed_ms"] == 12.4 and one["ports"] == inst["ports"]


def test_build_retries_once_after_a_reset_with_the_same_key(
    api: FakeController, agentctl: RunCli
) -> None:
    inst = instance("web")
    keys: list[str] = []

    def answer(req: Request) -> Reply | None:
        keys.append(req.headers["Idempotency-Key"])
        if len(keys) == 1:
            return None  # the connection is dropped without an answer
        return Reply(200, accepted("create", [inst]))

    api.handle("POST", "/v1/instances", answer)
    run = agentctl("send", "build")
    assert run.code == 0, run.err
    assert len(keys) == 2 and keys[0] == keys[1]
    # a new invocation gets a new key
    agentctl("send", "build")
    assert keys[2] != keys[0]


# --------------------------------------------------------------------------- delete, reboot


def test_delete_wait_follows_the_stream(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("web", state="deleting", task="delete")
    api.reply("DELETE", "/v1/instances/web", accepted("delete", [inst], "req-d"), 202)
    p = inst["ports"][0]
    api.stream(
        [
            event(1, "api.received", inst, 0, source="api", request_id="req-d", operation="delete"),
            event(2, "instance.delete.start", inst, 1, source="compute-agent", operation="delete"),
            event(3, "instance.delete.end", inst, 5, source="compute-agent", operation="delete"),
            event(
                4,
                "port.vif_unplugged",
                None,
                7,
                source="l2-agent",
                port_id=p["id"],
                operation="delete",
                step="tap123",
            ),
            event(5, "operation.done", inst, 8, state="deleted", operation="delete", final=True),
        ]
    )
    run = agentctl("--json", "send", "delete", "web", "--wait")
    assert run.code == 0, run.err
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert [d["event"] for d in docs[:-1]] == ["delete_started", "port_unwired", "deleted"]
    assert docs[-1] == {
        "request_id": "req-d",
        "operation": "delete",
        "ok": True,
        "timed_out": False,
        "instance_uuid": inst["uuid"],
        "name": "web",
        "host": "node1",
        "state": "done",
        "reason": None,
    }


def test_delete_with_the_wrong_host_is_refused_before_anything_is_sent(
    api: FakeController, agentctl: RunCli
) -> None:
    api.reply("GET", "/v1/instances/web", instance("web", host="node2"))
    run = agentctl("send", "delete", "--host", "node1", "web")
    assert run.code == 2
    assert "instance 'web' is on host 'node2', not on 'node1'" in run.err
    assert not [r for r in api.requests if r.method == "DELETE"]


def test_reboot_with_the_right_host_acts_on_the_uuid(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("web")
    api.reply("GET", "/v1/instances/web", inst)
    api.reply("POST", f"/v1/instances/{inst['uuid']}/reboot", accepted("reboot", [inst]), 202)
    run = agentctl("send", "reboot", "--host", "node1", "web", "--hard")
    assert run.code == 0, run.err
    assert api.seen("POST", f"/v1/instances/{inst['uuid']}/reboot")[0].body == {"hard": True}
    assert "reboot accepted (req-1)" in run.out


# --------------------------------------------------------------------------- inventory


def test_list_prints_a_table_and_json(api: FakeController, agentctl: RunCli) -> None:
    a, b = instance("a", state="running", task=None), instance("b", host=None)
    api.reply("GET", "/v1/instances", [a, b])
    run = agentctl("list", "--host", "node1")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "UUID",
        "HOST",
        "STATE",
        "TASK",
        "FLAVOR",
        "IMAGE",
        "IP",
        "CREATED",
    ]
    row = ["a", a["uuid"], "node1", "running", "-", "m1.tiny", "tiny", "10.10.0.11"]
    assert lines[1].split()[:8] == row
    assert lines[2].split()[2] == "-"
    assert api.seen("GET", "/v1/instances")[0].query == {"host": "node1"}
    assert json.loads(agentctl("list", "--json").out) == [a, b]


def test_show_timeline_prints_offsets_per_operation(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("web", state="running")
    inst["operations"] = [{"id": "op-1", "kind": "create", "state": "done", "attempts": 1}]
    api.reply("GET", "/v1/instances/web", inst)
    events = build_events(inst)
    reboot = [
        event(
            30, "api.received", inst, 5000, source="api", operation_id="op-2", operation="reboot"
        ),
        event(
            31,
            "operation.done",
            inst,
            5020.25,
            operation_id="op-2",
            operation="reboot",
            state="running",
            final=True,
        ),
    ]
    api.reply(
        "GET",
        f"/v1/instances/{inst['uuid']}/timeline",
        {"instance": inst, "events": events + reboot},
    )
    run = agentctl("show", "web", "--timeline")
    assert run.code == 0, run.err
    text = run.out.split("timeline:\n", 1)[1]
    p = inst["ports"][0]["id"][:8]
    assert text.splitlines() == [
        f"create  req-1  operation op-{inst['uuid'][:5]}",
        "   +0.0 ms  api            controller  api.received",
        "   +1.2 ms  controller     controller  casts.sent to node1",
        f"   +2.0 ms  l2-agent       node1       port.received port {p}",
        "   +3.1 ms  l2-agent       node1       port.vif_plugged tap123 in brq456",
        "   +4.0 ms  compute-agent  node1       instance.create.start",
        "   +8.0 ms  compute-agent  node1       instance.create.progress guest_started",
        "  +11.5 ms  compute-agent  node1       instance.create.end running",
        "  +12.4 ms  controller     controller  operation.done running",
        "reboot  req-1  operation op-2",
        "   +0.0 ms  api            controller  api.received",
        "  +20.2 ms  controller     controller  operation.done running",
    ]
    assert "operation:  create  done" in run.out
    data = json.loads(agentctl("--json", "show", "web", "--timeline").out)
    assert data["uuid"] == inst["uuid"] and len(data["events"]) == 10


def test_console_log_passes_tail_and_prints_the_text(api: FakeController, agentctl: RunCli) -> None:
    api.reply("GET", "/v1/instances/web/console-log", {"text": "a\nb", "truncated": True})
    run = agentctl("console-log", "web", "--tail", "2")
    assert run.code == 0, run.err
    assert run.out == "a\nb\n" and "(older output cut off)" in run.err
    assert api.seen("GET", "/v1/instances/web/console-log")[0].query == {"tail": "2"}
    assert agentctl("console-log", "web", "--tail", "-1").code == 2


def test_ports_and_agents_tables(api: FakeController, agentctl: RunCli) -> None:
    p = {"id": "p1", "host": "node1", "state": "wired", "network": "net1", "device": "tapp1"}
    p |= {"bridge": "brq1", "mac": "fa:16:3e:00:00:02", "fixed_ip": "10.10.0.12"}
    p |= {"instance_uuid": "i1"}
    api.reply("GET", "/v1/ports", [p])
    run = agentctl("ports")
    assert run.code == 0, run.err
    assert run.out.splitlines()[1].split() == [
        "p1",
        "node1",
        "wired",
        "net1",
        "tapp1",
        "brq1",
        "fa:16:3e:00:00:02",
        "10.10.0.12",
        "i1",
    ]
    host: dict[str, object] = {"host": "node1", "kind": "compute", "state": "up"}
    host |= {"version": "0.1.0"}
    host |= {"uptime_s": 75.0, "last_seen": "2026-11-29T22:01:02Z", "counts": {"instances": 2}}
    host |= {"vcpus": 8, "memory_mb": 16384, "vcpus_used": 2, "memory_mb_used": 256}
    api.reply("GET", "/v1/hosts", [host, {"host": "node1", "kind": "l2", "state": "down"}])
    run = agentctl("agents", "--window", "2")
    assert run.code == 0, run.err
    assert "--window is ignored" in run.err
    rows = run.out.splitlines()
    assert rows[0].split()[:4] == ["HOST", "KIND", "STATE", "VERSION"]
    assert "2/8 vcpu 256/16384 MB" in rows[1] and "instances=2" in rows[1]
    assert rows[2].split()[:5] == ["node1", "l2", "down", "-", "-"]


# --------------------------------------------------------------------------- watch


def test_watch_resolves_a_name_streams_and_stops_after_duration(
    api: FakeController, agentctl: RunCli
) -> None:
    inst = instance("web")
    api.reply("GET", "/v1/instances/web", inst)
    api.stream(build_events(inst)[:3], hold=5.0)
    started = time.monotonic()
    run = agentctl("watch", "--host", "node1", "--instance", "web", "--duration", "0.4")
    assert run.code == 0, run.err
    assert time.monotonic() - started < 2.0
    assert run.err == "watching events (Ctrl-C to stop)\n"
    lines = run.out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("22:01:02.123  api.received ")
    assert f"web ({inst['uuid'][:8]})" in lines[0]
    assert lines[1].split()[1:4] == ["casts.sent", "controller", "node1"]
    (req,) = api.seen("GET", "/v1/events")
    assert req.query["instance"] == inst["uuid"] and req.query["host"] == "node1"
    assert "replay" not in req.query and int(req.query["timeout"]) >= 1


def test_watch_json_prints_the_events_as_they_are(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("web")
    events = build_events(inst)[:2]
    api.stream(events, hold=5.0)
    run = agentctl("--json", "watch", "--instance", inst["uuid"], "--duration", "0.3")
    assert run.code == 0, run.err
    assert [json.loads(line) for line in run.out.splitlines()] == events
    assert not api.seen("GET", f"/v1/instances/{inst['uuid']}")  # a uuid needs no lookup


def test_watch_shows_its_stacks_on_sigusr2_and_goes_on(
    api: FakeController, agentctl: RunCli, capfd: pytest.CaptureFixture[str]
) -> None:
    """A watch that seems stuck can be asked where it is (kill -USR2), as the daemons can."""
    import os
    import signal
    import threading

    inst = instance("web")
    api.stream(build_events(inst)[:2], hold=5.0)
    # the test's own fallback: a USR2 landing after the watch would not kill pytest
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR2))
    try:
        timer.start()
        run = agentctl("--json", "watch", "--instance", inst["uuid"], "--duration", "1.0")
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
    assert run.code == 0, run.err
    assert len(run.out.splitlines()) == 2
    # Only the dump's header is certain: faulthandler lists at most 100 threads, and a
    # whole test session's process may hold more than that.
    assert "most recent call first" in capfd.readouterr().err


def test_watch_duration_must_be_positive(agentctl: RunCli) -> None:
    run = agentctl("watch", "--duration", "0")
    assert run.code == 2 and "--duration" in run.err


# --------------------------------------------------------------------------- failures


def test_controller_down_exits_3_fast_with_a_hint() -> None:
    url = dead_url()
    out, err = io.StringIO(), io.StringIO()
    environ = {"AGENTS_URL": url, "AGENTS_CONFIG": "/dev/null"}
    started = time.monotonic()
    code = cli.main(["--json", "list"], out=out, err=err, environ=environ)
    assert time.monotonic() - started < 1.0
    assert code == 3
    assert err.getvalue() == (
        f"agentctl: error: the controller at {url} is unreachable (connection refused);"
        " is agents-controller running? (set [agentctl] url or AGENTS_URL)\n"
    )
    data = json.loads(out.getvalue())
    assert data["code"] == "controller.unreachable" and data["exit_code"] == 3


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (Reply(200, raw=b"<html>hello</html>", content_type="text/html"), "not JSON"),
        (Reply(200, {"instances": []}), "expected a list, got dict"),
        (Reply(200, [{"uuid": "u", "name": "n"}]), "instance has no 'host'"),
        (Reply(200, [{"uuid": 1, "name": "n", "host": None, "state": "x", "ports": []}]), "uuid"),
        (Reply(502, raw=b"Bad Gateway", content_type="text/plain"), "HTTP 502"),
        (Reply(500, {"detail": "boom"}), "without an error body"),
    ],
)
def test_an_answer_that_is_not_the_contract_exits_1_without_a_traceback(
    api: FakeController, agentctl: RunCli, reply: Reply, problem: str
) -> None:
    api.handle("GET", "/v1/instances", lambda _req: reply)
    run = agentctl("list")
    assert run.code == 1
    assert run.err.startswith("agentctl: error: unexpected answer from the controller to GET")
    assert problem in run.err and "Traceback" not in run.err


def test_a_stream_event_that_is_not_json_exits_1(api: FakeController, agentctl: RunCli) -> None:
    inst = instance("web")
    api.reply("POST", "/v1/instances", accepted("create", [inst]), 202)
    api.stream([{"id": 1}])  # lacks every field an EVENT has
    run = agentctl("send", "build", "--wait", "--timeout", "2")
    assert run.code == 1 and "event has no 'at'" in run.err


def test_debug_traces_each_request(api: FakeController, agentctl: RunCli) -> None:
    api.reply("GET", "/v1/instances", [])
    run = agentctl("list", "--debug")
    assert run.code == 0
    assert "agentctl: debug: GET /v1/instances -> 200 in " in run.err


# --------------------------------------------------------------------------- completion


def test_completion_words_come_from_the_api(api: FakeController, agentctl: RunCli) -> None:
    api.reply(
        "GET",
        "/v1/hosts",
        [
            {"host": "node2", "kind": "l2", "state": "up"},
            {"host": "node1", "kind": "compute", "state": "down"},
            {"host": "node2", "kind": "compute", "state": "up"},
        ],
    )
    api.reply("GET", "/v1/flavors", [{"name": "m1.tiny", "vcpus": 1}, {"name": "m1.small"}])
    api.reply("GET", "/v1/networks", [{"name": "net1", "id": "x"}])
    assert agentctl("completion", "hosts").out == "node1\nnode2\n"
    assert agentctl("completion", "flavors").out == "m1.tiny\nm1.small\n"
    assert agentctl("completion", "networks").out == "net1\n"


def test_completion_words_are_silent_on_any_error(api: FakeController, agentctl: RunCli) -> None:
    started = time.monotonic()
    run = agentctl("completion", "hosts", env={"AGENTS_URL": dead_url()})
    assert (run.out, run.err) == ("", "") and run.code == 3
    assert time.monotonic() - started < 1.0
    api.reply("GET", "/v1/flavors", {"not": "a list"})
    run = agentctl("completion", "flavors")
    assert (run.out, run.err) == ("", "")
    run = agentctl("completion", "networks", env={"AGENTS_URL": "ftp://x"})
    assert (run.out, run.err) == ("", "")


def test_completion_script_is_valid_bash_and_completes_commands(
    agentctl: RunCli, tmp_path: Path
) -> None:
    run = agentctl("completion", "bash")
    script = run.out
    assert run.code == 0 and "complete -F _agentctl agentctl" in script
    bash = shutil.which("bash")
    assert bash is not None
    probe = tmp_path / "probe.sh"

    def complete(*words: str) -> set[str]:
        probe.write_text(
            script
            + f"COMP_WORDS=(agentctl {' '.join(words)}); COMP_CWORD={len(words)}; _agentctl; "
            + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        done = subprocess.run([bash, str(probe)], capture_output=True, text=True, check=True)
        return set(done.stdout.split())

    assert {"send", "list", "watch", "agents", "console-log"} <= complete("")
    assert complete("send", "") >= {"build", "delete", "reboot"}
    assert "--count" in complete("send", "build", "--")
    assert "--hard" in complete("send", "reboot", "--h")
    assert "--timeline" in complete("show", "--")
    assert "--window" not in complete("agents", "--")  # accepted, no longer offered
    assert "bash" in complete("completion", "")
    # values come from `agentctl completion flavors|networks|hosts`, run at completion time
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "agentctl").write_text(
        '#!/bin/sh\n[ "$2" = flavors ] && printf "m1.tiny\\nm1.small\\n"\n'
    )
    (fake / "agentctl").chmod(0o755)
    probe.write_text(
        f"PATH={fake}:$PATH\n"
        + script
        + "COMP_WORDS=(agentctl send build --flavor m1.s); COMP_CWORD=4; _agentctl; "
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run([bash, str(probe)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["m1.small"]


# --------------------------------------------------------------------------- several controllers


def test_several_urls_the_next_is_tried_when_one_refuses(api: FakeController) -> None:
    dead = dead_url()
    api.reply("GET", "/v1/instances", [])
    out, err = io.StringIO(), io.StringIO()
    environ = {"AGENTS_URL": f"{dead}, {api.url}", "AGENTS_CONFIG": "/dev/null"}
    code = cli.main(["--json", "list"], out=out, err=err, environ=environ)
    assert (code, json.loads(out.getvalue())) == (0, [])
    assert len(api.seen("GET", "/v1/instances")) == 1


def test_an_http_error_answer_is_not_sent_to_the_next_controller(api: FakeController) -> None:
    with FakeController() as second:
        api.reply("GET", "/v1/instances", {"error": {"code": "x", "message": "no"}}, status=500)
        second.reply("GET", "/v1/instances", [])
        out, err = io.StringIO(), io.StringIO()
        environ = {"AGENTS_URL": f"{api.url},{second.url}", "AGENTS_CONFIG": "/dev/null"}
        code = cli.main(["list"], out=out, err=err, environ=environ)
        assert code != 0 and "no" in err.getvalue()
        assert second.seen("GET", "/v1/instances") == []


def test_none_of_several_urls_answers_exits_3_naming_each() -> None:
    first, second = dead_urls(2)
    out, err = io.StringIO(), io.StringIO()
    environ = {"AGENTS_URL": f"{first},{second}", "AGENTS_CONFIG": "/dev/null"}
    code = cli.main(["list"], out=out, err=err, environ=environ)
    assert code == 3
    assert f"{first}: connection refused; {second}: connection refused" in err.getvalue()
