"""agentctl stays a thin, fast HTTP client: what a real process imports, and how long it runs.

Each check runs a fresh interpreter (sys.modules of the test process is full of everything).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from tests.unit.ctl.fakeapi import FakeController, accepted, build_events, instance

# Never, on any command: the broker, netlink, libvirt, the agents, the controller.
BANNED = (
    "oslo_messaging",
    "oslo_config",
    "kombu",
    "amqp",
    "pyroute2",
    "libvirt",
    "agents.compute",
    "agents.l2",
    "agents.controller",
    # of common, only common.errors and common.stacks (stdlib only) may come along:
    # common.rpc above all is banned, and common.config / common.messages pull pydantic
    # too slow to import for a command that should take a few tens of milliseconds
    "pydantic",
    "structlog",
    "httpx",
    "requests",
    "sqlalchemy",
    # dataclasses pulls in inspect (ast, dis, tokenize): about 8 ms of every command
    "dataclasses",
    "inspect",
)

PROBE = """
import json, sys
from agents.ctl import cli
codes = [cli.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""


def _modules(argvs: list[list[str]], url: str) -> tuple[list[int], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs)],
        env={"AGENTS_URL": url, "AGENTS_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    return result["codes"], result["modules"]


ALLOWED_COMMON = {"common", "common.errors", "common.stacks"}


def _banned(modules: list[str]) -> list[str]:
    common = [m for m in modules if m.startswith("common.") and m not in ALLOWED_COMMON]
    return common + [m for m in modules if any(m == b or m.startswith(b + ".") for b in BANNED)]


def test_no_command_imports_the_broker_the_agents_or_heavy_libraries() -> None:
    inst = instance("web")
    with FakeController() as api:
        api.reply("POST", "/v1/instances", accepted("create", [inst]), 202)
        api.stream(build_events(inst))
        api.reply("GET", "/v1/instances", [inst])
        api.reply("GET", "/v1/instances/web", inst)
        api.reply(
            "GET",
            f"/v1/instances/{inst['uuid']}/timeline",
            {"instance": inst, "events": build_events(inst)},
        )
        api.reply("GET", "/v1/hosts", [{"host": "node1", "kind": "compute", "state": "up"}])
        codes, modules = _modules(
            [
                ["send", "build", "--wait"],
                ["list"],
                ["--json", "show", "web", "--timeline"],
                ["watch", "--instance", "web", "--duration", "0.2"],
                ["agents"],
                ["completion", "hosts"],
                ["show", "missing"],  # an error body
            ],
            api.url,
        )
    assert codes == [0, 0, 0, 0, 0, 0, 1]
    assert "http.client" in modules  # the probe really went over HTTP
    assert _banned(modules) == []


def test_help_does_not_even_load_the_http_client() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json\nfrom agents.ctl import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    modules = json.loads(done.stdout.splitlines()[-1])
    assert _banned(modules) == []
    assert "http.client" not in modules and "agents.ctl.client" not in modules


def test_a_dead_controller_is_reported_by_the_installed_command_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from agents.ctl.cli import main; sys.exit(main())",
            "list",
        ],
        env={"AGENTS_URL": url, "AGENTS_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "unreachable (connection refused)" in done.stderr
    # the whole process, interpreter start included; about 60 ms here, bounded loosely for CI
    assert elapsed < 1.0
