"""The three units under a real systemd (PID 1), installed by tools/install.sh as an operator would.

A cached Debian 12 root (nspawn.py: debootstrap + install.sh's prerequisites) is booted
with `systemd-nspawn --boot` in a network namespace of its own; the checkout is copied
in and `tools/install.sh` runs inside, so the venv, /etc/agents, the units, the accounts
and `systemctl enable --now agents-controller` are exactly an operator's. The configs
are in /etc/agents before the install (install.sh keeps existing files): a control
exchange, an events topic, an events queue and a host name of this test only, so
nothing mixes with other users of the machine's RabbitMQ; the test deletes those queues
and the exchange afterwards. The broker is the machine's, reached through relay.py; so
is the controller's database: a scratch PostgreSQL database of this test on the
machine's server (127.0.0.1:5432, user postgres, trust), created before the boot and
dropped afterwards (agents.lab.database.ScratchPostgres).

What is proved, with systemd's own view (`systemctl show`, the journal):

- each unit is `activating` while its daemon runs but cannot be ready (no broker), and
  `active (running)` only once the broker is back: the Type=notify READY=1 path;
- journald holds the daemons' JSON lines, each at its level's PRIORITY; a build asked of
  the controller's API shows its request_id and instance_uuid in
  `journalctl -o json -u compute-agent`, its request_id in the l2-agent's;
- the controller keeps its state in that PostgreSQL database (its `database_ready`
  line names it, the build's instance row is there, no SQLite file exists);
- the l2-agent's process has CAP_NET_ADMIN and nothing else (/proc/PID/status);
- `systemd-analyze security` of the installed units (printed; docs/operations.md);
- a daemon frozen with SIGSTOP is killed by the watchdog and restarted (WatchdogSec
  lowered to 5 s by a drop-in in /etc/systemd/system/UNIT.d/, as `systemctl edit` does);
- a daemon killed with SIGKILL is restarted (Restart=on-failure);
- `systemctl stop compute-agent` with builds in flight (waiting for their ports: the
  l2-agent is stopped) ends within TimeoutStopSec, exit status 0, the builds handed
  back and left in the agent's journal (/var/lib/agents/compute-agent/HOST/journal);
  started again, with the l2-agent back, every one of them ends `running`;
- `systemctl stop` ends each within its TimeoutStopSec, exit status 0.

The tests of this module run in order on one container; the last stops the daemons.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.lab.broker import BrokerScope
from agents.lab.broker import delete as delete_queues
from agents.lab.database import ScratchPostgres
from agents.lab.procs import REPO, LabError
from tests.functional.systemd import nspawn
from tests.functional.systemd.nspawn import Container, Overlay, Relay, timed
from tests.functional.systemd.test_units import EXPOSURE_LIMIT
from tests.functional.systemd.units import UNITS

pytestmark = [pytest.mark.pid1, pytest.mark.timeout(1800)]

CONTROLLER = "agents-controller.service"
AGENTS = ("l2-agent.service", "compute-agent.service")
WATCHDOG_SEC = 5
# Seconds a daemon is kept from being ready. The l2-agent waits for the broker as long
# as TimeoutStartSec allows; the compute-agent gives up after 10 s ("could not consume
# vif_events... within 10s", exit 1, restarted), so it is held for less.
HOLD_L2_S = 6.0
HOLD_COMPUTE_S = 4.0
API = "http://127.0.0.1:8780"
CAP_NET_ADMIN = 12
BROKER = "127.0.0.1:5672=127.0.0.1:5672"
POSTGRES = "127.0.0.1:5432=127.0.0.1:5432"
# The machine's PostgreSQL, as the functional tests reach it (trust on loopback). Inside
# the container the same address is relay.py's, so the server sees a loopback peer too.
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# [compute] stop_grace of the test's config (20 s by default): builds waiting for their
# ports get this long before they are handed back, so a stop with builds in flight
# takes a few seconds, not 20. TimeoutStopSec (40 s) is the unit's own.
STOP_GRACE = 6
IN_FLIGHT = 3
COMPUTE_METRICS = "http://127.0.0.1:9101/metrics"


def edit(text: str, old: str, new: str, name: str) -> str:
    """One operator edit of a sample config; a sample that changed fails here, clearly."""
    assert old in text, f"etc/{name} no longer contains {old!r}: update test_pid1.py"
    return text.replace(old, new)


@dataclass
class Machine:
    container: Container
    host: str
    broker: Relay
    database: ScratchPostgres
    scores: dict[str, str]
    built: list[str]  # uuids of the instances built through the controller

    def run(self, *cmd: str, timeout: float = 120) -> str:
        return self.container.run(list(cmd), timeout=timeout).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        return self.container.show(unit, *props)

    def log(self, unit: str, lines: int = 40) -> str:
        return self.container.run(
            ["journalctl", "--no-pager", "-n", str(lines), "-u", unit], check=False
        ).stdout

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def api(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """An HTTP request to the controller, made inside the container (its loopback)."""
        script = (
            "import json, sys, urllib.request, urllib.error\n"
            "method, url, data = sys.argv[1], sys.argv[2], sys.argv[3]\n"
            # root's admin API token, made by install.sh
            "token = open('/root/.config/agents/token').read().strip()\n"
            "req = urllib.request.Request(url, method=method, data=data.encode() or None,\n"
            "    headers={'Content-Type': 'application/json',\n"
            "             'Authorization': 'Bearer ' + token})\n"
            "try:\n"
            "    r = urllib.request.urlopen(req, timeout=20)\n"
            "except urllib.error.HTTPError as e:\n"
            "    r = e\n"
            "print(r.status); print(r.read().decode())\n"
        )
        data = "" if body is None else json.dumps(body)
        out = self.run("python3", "-c", script, method, API + path, data)
        status, _, text = out.partition("\n")
        return int(status), json.loads(text) if text.strip() else None

    def metric(self, url: str, name: str) -> float | None:
        """One sample of a Prometheus endpoint inside the container (None: not there)."""
        script = (
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
        )
        text = self.container.run(["python3", "-c", script, url], check=False).stdout
        found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+(\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def wait_done(self, uuids: list[str], timeout: float) -> dict[str, dict[str, object]]:
        """GET each instance until none has a task in flight; their last views."""
        deadline = time.monotonic() + timeout
        views: dict[str, dict[str, object]] = {}
        pending = list(uuids)
        while pending:
            for uuid in list(pending):
                status, inst = self.api("GET", f"/v1/instances/{uuid}")
                assert status == 200 and isinstance(inst, dict), inst
                views[uuid] = inst
                if inst["task"] is None and inst["state"] in ("running", "error"):
                    pending.remove(uuid)
            assert time.monotonic() < deadline, f"not done after {timeout} s: " + str(
                [views[u] for u in pending]
            )
            time.sleep(0.5)
        return views

    def journal(self, unit: str, since: str | None = None) -> list[dict[str, object]]:
        cmd = ["journalctl", "--no-pager", "-o", "json", "-u", unit]
        if since:
            cmd += ["--after-cursor", since]
        return [json.loads(line) for line in self.run(*cmd).splitlines() if line.strip()]

    def cursor(self) -> str:
        out = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor")
        return out.strip().rpartition("-- cursor: ")[2]


def write_configs(
    etc: Path, scope: BrokerScope, host: str, topic: str, queue: str, database_url: str
) -> None:
    """/etc/agents/*.conf as the operator edits them, before install.sh (which keeps them)."""
    etc.mkdir(parents=True, exist_ok=True)
    samples = {p.name: p.read_text() for p in (REPO / "etc").glob("*.conf")}
    shared = samples["shared.conf"]
    shared = edit(
        shared,
        "control_exchange = agents\n",
        f"control_exchange = {scope.exchange}\n",
        "shared.conf",
    )
    shared = edit(
        shared, "events_topic = agents_events\n", f"events_topic = {topic}\n", "shared.conf"
    )
    controller = edit(
        samples["controller.conf"],
        "events_queue = agents-controller.events\n",
        f"events_queue = {queue}\n",
        "controller.conf",
    )
    controller = edit(
        controller, "database_url =\n", f"database_url = {database_url}\n", "controller.conf"
    )
    compute = samples["compute-agent.conf"]
    compute = edit(compute, "#host = node1\n", f"host = {host}\n", "compute-agent.conf")
    compute = edit(
        compute,
        "libvirt_uri = qemu:///system\n",
        "libvirt_uri = test:///default\n",
        "compute-agent.conf",
    )
    compute = edit(compute, "domain_type = qemu\n", "domain_type = test\n", "compute-agent.conf")
    compute = edit(
        compute, "stop_grace = 20\n", f"stop_grace = {STOP_GRACE}\n", "compute-agent.conf"
    )
    l2 = edit(samples["l2-agent.conf"], "#host = node1\n", f"host = {host}\n", "l2-agent.conf")
    for name, text in {
        "shared.conf": shared,
        "controller.conf": controller,
        "compute-agent.conf": compute,
        "l2-agent.conf": l2,
    }.items():
        (etc / name).write_text(text)
        # readable by the controller's user through the directory install.sh makes
        # root:agents 0750 (the group does not exist before the install)
        (etc / name).chmod(0o644)


def sweep_queues(*needles: str) -> list[str]:
    """Delete every queue whose name holds one of `needles` (random, this test's own):
    whatever the daemons declared that BrokerScope does not list. Needs rabbitmqctl."""
    if shutil.which("rabbitmqctl") is None:
        return []
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "name"], capture_output=True, text=True, timeout=60
    ).stdout
    names = [n for n in out.split() if any(needle in n for needle in needles)]
    delete_queues(names)
    return names


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    nspawn.require_root_and_tools()
    scope = BrokerScope.new("pid1-")
    host = scope.host("pid1")
    topic = f"pid1-ev-{scope.suffix}"
    scope.queue(f"{topic}.info")
    scope.queue(f"{topic}.error")
    events_queue = scope.queue(f"pid1-ctl-{scope.suffix}.events")
    logs = tmp_path_factory.mktemp("pid1")
    overlay: Overlay | None = None
    container: Container | None = None
    database: ScratchPostgres | None = None
    relays: list[Relay] = []
    try:
        try:
            database = ScratchPostgres.create(PG_ADMIN, prefix="pid1_")
        except LabError as err:
            pytest.fail(
                f"{err}: the pid1 test needs the machine's PostgreSQL on 127.0.0.1:5432 "
                "(user postgres, trust on loopback), as the functional tests do",
                pytrace=False,
            )
        lower = nspawn.pid1_root()
        with timed("pid1: prepare a throwaway copy"):
            overlay = Overlay(lower)
            root = overlay.root
            nspawn.copy_checkout(root / "root/agents")
            write_configs(root / "etc/agents", scope, host, topic, events_queue, database.url)
            binds_ro = nspawn.carry_pip_setup(root)
        pip_cache = nspawn.CACHE / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        container = Container(
            root,
            logs / "console.log",
            binds={str(pip_cache): "/root/.cache/pip"},
            binds_ro=binds_ro,
        )
        with timed("pid1: boot to multi-user"):
            container.boot()
        proxy = Relay(container.netns, proxy=True).start()
        relays.append(proxy)
        broker = Relay(container.netns, forwards=[BROKER]).start()
        relays.append(broker)
        # a relay of its own: the READY checks take the broker away, never the database
        relays.append(Relay(container.netns, forwards=[POSTGRES]).start())
        with timed("pid1: tools/install.sh inside"):
            env = {**nspawn.pip_environment(), **nspawn.proxy_env()}
            out = container.run(["bash", "/root/agents/tools/install.sh"], env=env, timeout=900)
        print(out.stdout[-2000:])
        proxy.stop()
        relays.remove(proxy)
        container.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "/var/lib/agents/images/tiny.qcow2", "16M"]
        )
        yield Machine(container, host, broker, database, scores={}, built=[])
    finally:
        with timed("pid1: power off and clean up"):
            if container is not None:
                container.poweroff()
            for relay in relays:
                relay.stop()
            if overlay is not None:
                overlay.remove()
            try:
                if database is not None:  # WITH (FORCE): sessions of a killed run too
                    database.drop()
                    assert not database.exists(), f"database {database.name} not dropped"
            finally:
                scope.cleanup()
                left = sweep_queues(scope.suffix, scope.exchange)
                if left:
                    nspawn.note(f"[pid1] deleted queues BrokerScope did not know of: {left}")


def test_install_started_the_controller(machine: Machine) -> None:
    """install.sh enabled and started agents-controller; /healthz answers inside."""
    state = machine.show(CONTROLLER, "ActiveState", "SubState", "UnitFileState", "Type")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "UnitFileState": "enabled",
        "Type": "notify",
    }, machine.run("journalctl", "--no-pager", "-n", "50", "-u", CONTROLLER)
    status, body = machine.api("GET", "/healthz")
    assert status == 200, body


def test_active_only_after_ready(machine: Machine) -> None:
    """With the broker away each daemon runs but its unit is not `active`; once the broker
    is back the unit turns `active (running)` with the STATUS= sent along READY=1.

    Every daemon waits for the broker inside start(): its unit stays `activating` (with
    a live MainPID and STATUS "<name> starting") while it is away, and no restart counts
    against the start limit. The compute-agent is ordered After=l2-agent, so while the
    l2-agent is not ready its start job waits; it is held on its own in a second round.
    """
    for unit in UNITS:
        machine.run("mkdir", "-p", f"/etc/systemd/system/{unit}.d")
        # what `systemctl edit UNIT` writes; the watchdog tests below rely on it
        machine.container.run(
            ["tee", f"/etc/systemd/system/{unit}.d/override.conf"],
            input=f"[Service]\nWatchdogSec={WATCHDOG_SEC}\n",
        )
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "enable", *AGENTS)
    # The controller's restarts below count against StartLimitBurst=5 in 300 s.
    machine.run("systemctl", "stop", CONTROLLER)
    machine.run("systemctl", "reset-failed", CONTROLLER)

    with timed("pid1: READY check, round 1 (l2-agent and controller held)"):
        restarts = hold_without_broker(
            machine,
            # one job per unit, in this order: compute-agent's job finds l2-agent's queued
            ["systemctl", "start", "--no-block", CONTROLLER, *AGENTS],
            held=["l2-agent.service", CONTROLLER],
            hold=HOLD_L2_S,
            waiting=["compute-agent.service"],
        )
    assert restarts == 0
    waited = machine.show(CONTROLLER, "NRestarts")["NRestarts"]
    assert waited == "0", f"{CONTROLLER} restarted {waited} times while the broker was away"
    nspawn.note(f"[pid1] {CONTROLLER}: waited for the broker, no restart")
    # stopped while the broker is there: a stop without it takes the agent ~19 s
    machine.run("systemctl", "stop", "compute-agent.service")
    with timed("pid1: READY check, round 2 (compute-agent held)"):
        hold_without_broker(
            machine,
            ["systemctl", "start", "--no-block", "compute-agent.service"],
            held=["compute-agent.service"],
            hold=HOLD_COMPUTE_S,
        )
    for unit in UNITS:
        s = machine.show(
            unit,
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
            "WatchdogUSec",
            "NotifyAccess",
            "StatusText",
        )
        started = int(s["ExecMainStartTimestampMonotonic"])
        active = int(s["ActiveEnterTimestampMonotonic"])
        name = unit.removesuffix(".service")
        # only sd_notify sets StatusText; "serving" comes with READY=1 (common/service.py)
        assert s["StatusText"] == f"{name} serving", s
        assert s["WatchdogUSec"] == f"{WATCHDOG_SEC}s", s
        assert s["NotifyAccess"] == "main", s
        assert active > started, s
        hold = {"l2-agent.service": HOLD_L2_S, "compute-agent.service": HOLD_COMPUTE_S}
        if unit in hold:  # exec'd before the hold, active only after it
            assert active - started >= hold[unit] * 1e6, (unit, s)
        nspawn.note(f"[pid1] {unit}: activating {(active - started) / 1e6:.1f} s until READY=1")
    # An operator's reset after an outage: the restarts above count against
    # StartLimitBurst=5 in 300 s, and the tests below restart every unit twice more.
    machine.run("systemctl", "reset-failed", *UNITS)


def hold_without_broker(
    machine: Machine,
    start: list[str],
    held: list[str],
    hold: float,
    waiting: tuple[str, ...] | list[str] = (),
    cycling: tuple[str, ...] | list[str] = (),
) -> int:
    """Broker away, run `start`; then check for `hold` seconds that each `held` unit is
    activating with a live daemon saying "starting", each `waiting` unit has a start job
    still waiting, no unit is active and each `cycling` unit was seen activating. Broker
    back: all of them active (running). Returns the restarts of the `cycling` units."""
    props = ("ActiveState", "SubState", "MainPID", "Type", "StatusText", "NRestarts")
    units = [*held, *waiting, *cycling]
    machine.broker.stop()
    machine.run(*start)
    since: dict[str, float] = {}  # held unit -> first seen activating with its daemon up
    cycled: set[str] = set()
    deadline = time.monotonic() + 60
    while len(since) < len(held) or time.monotonic() - max(since.values()) < hold:
        if time.monotonic() > deadline:
            late = [u for u in held if u not in since]
            states = {u: machine.show(u, *props) for u in late}
            logs = "\n".join(machine.log(u) for u in late)
            raise AssertionError(f"not activating after 60 s: {states}\n{logs}")
        jobs = machine.run("systemctl", "list-jobs", "--no-legend", "--no-pager")
        for unit in units:
            s = machine.show(unit, *props)
            assert s["Type"] == "notify", s
            assert s["ActiveState"] != "active", f"{unit} active without a broker: {s}"
            starting = (s["ActiveState"], s["SubState"]) == ("activating", "start")
            alive = s["MainPID"] != "0"
            if unit in cycling:
                if starting and alive:
                    cycled.add(unit)
            elif unit in waiting:
                assert s["ActiveState"] == "inactive", f"{s}\n{jobs}\n" + "\n".join(
                    machine.log(u, 15) for u in units
                )
                assert re.search(rf"{re.escape(unit)}\s+start\s+waiting", jobs), jobs
            elif starting and alive and s["StatusText"].endswith(" starting"):
                since.setdefault(unit, time.monotonic())
            else:
                assert unit not in since, (
                    f"{unit} left activating without a broker: {s}\n{machine.log(unit)}"
                )
        time.sleep(0.3)
    for unit in held:  # the daemon process itself ran all along
        pid = machine.main_pid(unit)
        assert Path(f"/proc/{machine.container.leader}/root/proc/{pid}").is_dir(), unit
    assert cycled == set(cycling), f"never seen activating with a live process: {cycling}"
    restarts = sum(int(machine.show(u, "NRestarts")["NRestarts"]) for u in cycling)
    machine.broker.start()
    back = time.monotonic()
    for unit in units:
        wait_active(machine, unit, timeout=120)
    nspawn.note(
        f"[pid1] {', '.join(units)} active {time.monotonic() - back:.1f} s after the broker"
    )
    return restarts


def wait_active(machine: Machine, unit: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        s = machine.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
        if (s["ActiveState"], s["SubState"]) == ("active", "running"):
            return s
        if time.monotonic() > deadline:
            log = machine.run("journalctl", "--no-pager", "-n", "40", "-u", unit)
            raise AssertionError(f"{unit} not active (running) after {timeout} s: {s}\n{log}")
        time.sleep(0.3)


def json_lines(
    entries: list[dict[str, object]],
) -> list[tuple[dict[str, object], dict[str, object]]]:
    """(journal entry, its MESSAGE parsed) of the entries whose MESSAGE is a JSON object."""
    structured = []
    for entry in entries:
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald gives non-UTF-8 messages as bytes
            message = bytes(message).decode(errors="replace")
        try:
            line = json.loads(str(message))
        except ValueError:
            continue
        if isinstance(line, dict):
            structured.append((entry, line))
    return structured


# journald's PRIORITY of each level common/logging.py writes (the `<N>` prefix)
PRIORITY = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}


def test_journal_has_the_json_fields_of_a_build(machine: Machine) -> None:
    """A build asked of the controller shows up in `journalctl -o json` of each unit: the
    compute-agent's lines carry its request_id and instance_uuid, the l2-agent's (which
    wires its port) its request_id; every line is filed at its level's PRIORITY."""
    with timed("pid1: build through the controller, read the journal"):
        status, body = machine.api("POST", "/v1/instances", {"host": machine.host})
        assert status == 202, body
        assert isinstance(body, dict)
        request_id = body["request_id"]
        instance = body["instances"][0]["uuid"]
        inst = machine.wait_done([instance], timeout=90)[instance]
        assert inst["state"] == "running", inst
        machine.built.append(instance)
        journals = {unit: json_lines(machine.journal(unit)) for unit in UNITS}

    structured = journals["compute-agent.service"]
    assert structured, "no JSON line of the compute-agent in the journal"
    ours = [line for _, line in structured if line.get("request_id") == request_id]
    assert ours, f"no journal line with request_id {request_id}"
    assert any(line.get("instance_uuid") == instance for line in ours), ours
    events = sorted({str(line.get("event")) for line in ours})
    nspawn.note(f"[pid1] compute-agent journal lines of {request_id}: {len(ours)}, events {events}")
    # What journald itself makes of the lines: the JSON is the MESSAGE, systemd adds its
    # own fields; request_id is not a journal field of its own (stdout is a stream).
    entry = next(e for e, line in structured if line.get("request_id") == request_id)
    assert entry["_SYSTEMD_UNIT"] == "compute-agent.service"
    assert entry["SYSLOG_IDENTIFIER"] == "compute-agent"
    assert "REQUEST_ID" not in entry
    fields = sorted(k for k in entry if not k.startswith("__"))
    nspawn.note(f"[pid1] journal fields of such a line: {fields}")

    # The l2-agent wired the build's port: its lines of that work carry the request_id,
    # the port_id and the instance_uuid, bound at message entry (agents/l2/endpoint.py).
    l2 = [line for _, line in journals["l2-agent.service"] if line.get("request_id") == request_id]
    assert l2, f"no l2-agent journal line with request_id {request_id}"
    assert any(
        line.get("event") == "port_plugged"
        and line.get("port_id")
        and line.get("instance_uuid") == instance
        for line in l2
    ), l2
    # The controller's lines of the same request: one when it was accepted and one when
    # its operation ended, each with both ids, and the API's canonical `request` lines
    # (the GETs name the instance in their path).
    controller = [line for _, line in journals[CONTROLLER]]
    assert controller, "no JSON line of the controller in the journal"
    for event in ("operation_accepted", "operation_finished"):
        assert any(
            line.get("event") == event
            and line.get("request_id") == request_id
            and line.get("instance_uuid") == instance
            for line in controller
        ), (event, controller[-20:])
    assert any(
        line.get("event") == "request"
        and line.get("method") == "POST"
        and line.get("path") == "/v1/instances"
        and line.get("status") == 202
        for line in controller
    ), controller[-20:]
    assert any(line.get("path") == f"/v1/instances/{instance}" for line in controller)
    for unit, lines in journals.items():
        keys = [
            key
            for key, value in (("request_id", request_id), ("instance_uuid", instance))
            if any(line.get(key) == value for _, line in lines)
        ]
        nspawn.note(f"[pid1] {unit}: JSON lines naming this build: {keys or 'none'}")

    # Each line carries its level as journald's PRIORITY (the `<N>` prefix is stripped),
    # so `journalctl -p warning` finds the daemons' warnings and errors. The READY checks
    # above left warnings (broker_connect_failed, waiting_for_broker).
    warnings = 0
    for unit, lines in journals.items():
        seen: dict[tuple[str, str], int] = {}
        for e, line in lines:
            pair = (str(line.get("level")), str(e.get("PRIORITY")))
            seen[pair] = seen.get(pair, 0) + 1
        wrong = {pair: n for pair, n in seen.items() if PRIORITY.get(pair[0], pair[1]) != pair[1]}
        assert not wrong, f"{unit}: level filed at another PRIORITY: {wrong}"
        assert ("info", "6") in seen, (unit, seen)
        warnings += seen.get(("warning", "4"), 0)
        loud = sorted(
            {
                f"{line.get('level')}:{line.get('event')}"
                for _, line in lines
                if line.get("level") not in ("debug", "info")
            }
        )
        nspawn.note(f"[pid1] {unit}: (level, PRIORITY) of its JSON lines: {seen}, {loud}")
    assert warnings, "no warning line in any unit's journal: PRIORITY=4 never seen"


def test_controller_keeps_its_state_in_the_machines_postgresql(machine: Machine) -> None:
    """database_url names the scratch database; the controller inside reaches it through
    relay.py. Its start says so, the build above is a row there, no SQLite file exists."""
    import psycopg

    name = machine.database.name
    lines = [line for _, line in json_lines(machine.journal(CONTROLLER))]
    ready = [line for line in lines if line.get("event") == "database_ready"]
    assert ready, "no database_ready line of the controller"
    url = str(ready[-1].get("url"))
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", ready[-1]
    nspawn.note(f"[pid1] controller: database_ready {url} revision {ready[-1].get('revision')}")
    sqlite = machine.container.run(
        ["bash", "-c", "ls /var/lib/agents/controller/*.sqlite*"], check=False
    )
    assert sqlite.returncode != 0, f"a SQLite file besides PostgreSQL: {sqlite.stdout}"
    assert machine.built, "no instance was built"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT uuid::text, state, task, host FROM instances WHERE uuid::text = ANY(%s)",
            (machine.built,),
        ).fetchall()
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert sorted(r[0] for r in rows) == sorted(machine.built), rows
    assert all(r[1:] == ("running", None, machine.host) for r in rows), rows
    nspawn.note(
        f"[pid1] PostgreSQL database {name}: {len(rows)} instance row(s) running; "
        f"{sessions[0] if sessions else 0} session(s) of the controller"
    )


def test_l2_agent_has_only_cap_net_admin(machine: Machine) -> None:
    pid = machine.main_pid("l2-agent.service")
    status = machine.run("cat", f"/proc/{pid}/status")
    caps = {
        key: int(value, 16)
        for key, value in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.MULTILINE)
    }
    decoded = {key: nspawn.decode_caps(mask) for key, mask in caps.items()}
    nspawn.note(f"[pid1] l2-agent (pid {pid} inside) {decoded}")
    assert caps["CapEff"] == 1 << CAP_NET_ADMIN, decoded
    assert caps["CapPrm"] == 1 << CAP_NET_ADMIN, decoded
    assert caps["CapBnd"] == 1 << CAP_NET_ADMIN, decoded
    assert caps["CapAmb"] == 0, decoded
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE), status
    assert re.search(r"^Uid:\s+0\s", status, re.MULTILINE), status
    # and the controller: no capability at all, its own user
    pid = machine.main_pid(CONTROLLER)
    status = machine.run("cat", f"/proc/{pid}/status")
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), status
    assert not re.search(r"^Uid:\s+0\s", status, re.MULTILINE), status


def test_systemd_analyze_security_of_the_installed_units(machine: Machine) -> None:
    with timed("pid1: systemd-analyze security"):
        for unit in UNITS:
            out = machine.run("systemd-analyze", "security", "--no-pager", unit)
            found = re.search(
                rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d) (\S+)", out
            )
            assert found, out[-2000:]
            machine.scores[unit] = f"{found.group(1)} {found.group(2)}"
            assert float(found.group(1)) * 10 <= EXPOSURE_LIMIT[unit], out
    nspawn.note("[pid1] systemd-analyze security (running units, systemd 252 as PID 1):")
    for unit, score in machine.scores.items():
        nspawn.note(f"[pid1]   {unit}: {score}")


def _kill_and_wait_restart(machine: Machine, signal_name: str, expect_log: str) -> None:
    before = {u: machine.show(u, "MainPID", "NRestarts") for u in UNITS}
    cursor = machine.cursor()
    began = time.monotonic()
    for unit in UNITS:
        # bash's kill: the root has no procps
        machine.run("bash", "-c", f"kill -{signal_name} {before[unit]['MainPID']}")
    pending = set(UNITS)
    took: dict[str, float] = {}
    deadline = began + WATCHDOG_SEC + 90
    while pending:
        for unit in sorted(pending):
            s = machine.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
            restarted = s["MainPID"] not in ("0", before[unit]["MainPID"])
            if restarted and (s["ActiveState"], s["SubState"]) == ("active", "running"):
                assert int(s["NRestarts"]) == int(before[unit]["NRestarts"]) + 1, (unit, before, s)
                took[unit] = time.monotonic() - began
                pending.discard(unit)
        assert time.monotonic() < deadline, f"not restarted after SIG{signal_name}: {pending}"
        time.sleep(0.3)
    for unit in UNITS:
        lines = [str(e.get("MESSAGE")) for e in machine.journal(unit, since=cursor)]
        assert any(expect_log in line for line in lines), f"{unit}:\n" + "\n".join(lines[-30:])
        nspawn.note(
            f"[pid1] {unit}: SIG{signal_name} -> active again, new MainPID, {took[unit]:.1f} s"
        )


def test_frozen_daemon_is_killed_by_the_watchdog_and_restarted(machine: Machine) -> None:
    with timed(f"pid1: SIGSTOP -> watchdog ({WATCHDOG_SEC} s) -> restart, all three"):
        _kill_and_wait_restart(machine, "STOP", "Failed with result 'watchdog'")


def test_killed_daemon_is_restarted(machine: Machine) -> None:
    with timed("pid1: SIGKILL -> restart, all three"):
        _kill_and_wait_restart(machine, "KILL", "Failed with result 'signal'")


def test_stop_hands_builds_in_flight_back(machine: Machine) -> None:
    """`systemctl stop compute-agent` with builds in flight: exit 0 within TimeoutStopSec,
    each build handed back and kept in the agent's journal; after `systemctl start`
    every one of them ends running, none failed.

    The l2-agent is stopped first, so the builds wait for their ports (vif_plugged)
    until the drain's grace ([compute] stop_grace) is over. The compute-agent is started
    again before the l2-agent: it replays its journal and listens for vif events, then
    the l2-agent takes the port_created casts waiting in its queue and wires the ports.
    """
    compute = "compute-agent.service"
    journal_dir = f"/var/lib/agents/compute-agent/{machine.host}/journal"
    metric = "compute_agent_builds_in_flight"

    def journal_entries() -> list[str]:
        out = machine.run("find", journal_dir, "-maxdepth", "1", "-name", "*.json")
        return sorted(Path(line).name for line in out.split())

    assert not journal_entries(), "the agent's journal is not empty before the builds"
    limit = machine.show(compute, "TimeoutStopUSec")["TimeoutStopUSec"]
    with timed(f"pid1: {IN_FLIGHT} builds in flight, stop, start, all running"):
        machine.run("systemctl", "stop", "l2-agent.service", timeout=120)
        status, body = machine.api(
            "POST", "/v1/instances", {"host": machine.host, "count": IN_FLIGHT}
        )
        assert status == 202, body
        assert isinstance(body, dict)
        uuids = [str(i["uuid"]) for i in body["instances"]]
        deadline = time.monotonic() + 60
        while machine.metric(COMPUTE_METRICS, metric) != IN_FLIGHT or (
            len(journal_entries()) != IN_FLIGHT
        ):
            assert time.monotonic() < deadline, (
                f"{IN_FLIGHT} builds not in flight after 60 s: {metric} "
                f"{machine.metric(COMPUTE_METRICS, metric)}, journal {journal_entries()}\n"
                + machine.log(compute)
            )
            time.sleep(0.3)
        for uuid in uuids:
            status, inst = machine.api("GET", f"/v1/instances/{uuid}")
            assert status == 200 and isinstance(inst, dict), inst
            assert inst["task"] == "create", inst

        cursor = machine.cursor()
        began = time.monotonic()
        machine.run("systemctl", "stop", compute, timeout=120)
        took = time.monotonic() - began
        s = machine.show(compute, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        nspawn.note(
            f"[pid1] systemctl stop {compute} with {IN_FLIGHT} builds waiting for their ports: "
            f"{took:.1f} s (stop_grace={STOP_GRACE} s, TimeoutStopSec={limit}) {s}"
        )
        assert (s["ActiveState"], s["Result"], s["ExecMainCode"], s["ExecMainStatus"]) == (
            "inactive",
            "success",
            "1",
            "0",
        ), s
        assert STOP_GRACE - 1 <= took < _seconds(limit), (took, limit)
        stopped = [line for _, line in json_lines(machine.journal(compute, since=cursor))]
        drained = [line for line in stopped if line.get("event") == "draining_builds"]
        assert drained and drained[0].get("in_flight") == IN_FLIGHT, drained or stopped
        handed = {
            str(line.get("instance_uuid"))
            for line in stopped
            if line.get("event") == "build_handed_back"
        }
        assert handed == set(uuids), (handed, uuids, stopped[-30:])
        assert not [line for line in stopped if line.get("event") == "build_failed"], stopped
        kept = journal_entries()
        assert len(kept) == IN_FLIGHT and all("build_instance" in n for n in kept), kept
        nspawn.note(f"[pid1] left in {journal_dir}: {len(kept)} build_instance entries")

        cursor = machine.cursor()
        began = time.monotonic()
        machine.run("systemctl", "start", compute, timeout=180)
        wait_active(machine, compute, timeout=120)
        machine.run("systemctl", "start", "l2-agent.service", timeout=180)
        wait_active(machine, "l2-agent.service", timeout=120)
        views = machine.wait_done(uuids, timeout=120)
        back = time.monotonic() - began
    states = {uuid: (v["state"], v.get("fault")) for uuid, v in views.items()}
    assert all(state == ("running", None) for state in states.values()), states
    machine.built.extend(uuids)
    started = [line for _, line in json_lines(machine.journal(compute, since=cursor))]
    replayed = [line for line in started if line.get("event") == "journal_replayed"]
    assert replayed and replayed[0].get("entries") == IN_FLIGHT, replayed or started[-30:]
    done = {str(line.get("instance_uuid")) for line in started if line.get("event") == "build_done"}
    assert done == set(uuids), (done, uuids)
    deadline = time.monotonic() + 15  # the entry of a build is removed once it ended
    while journal_entries():
        assert time.monotonic() < deadline, f"left in the journal: {journal_entries()}"
        time.sleep(0.3)
    for uuid in uuids:
        status, timeline = machine.api("GET", f"/v1/instances/{uuid}/timeline")
        assert status == 200 and isinstance(timeline, dict), timeline
        kinds = [str(e.get("event")) for e in timeline["events"]]
        assert "instance.create.handed_back" in kinds, kinds
        assert "instance.create.error" not in kinds, kinds
    nspawn.note(
        f"[pid1] {compute} started again: journal replayed {IN_FLIGHT} builds, all running "
        f"{back:.1f} s after the start (the l2-agent started after it)"
    )


def test_stop_ends_each_within_its_timeout(machine: Machine) -> None:
    with timed("pid1: systemctl stop, each"):
        for unit in (*AGENTS, CONTROLLER):
            limit = machine.show(unit, "TimeoutStopUSec")["TimeoutStopUSec"]
            cursor = machine.cursor()
            began = time.monotonic()
            machine.run("systemctl", "stop", unit, timeout=120)
            took = time.monotonic() - began
            s = machine.show(unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
            nspawn.note(f"[pid1] systemctl stop {unit}: {took:.1f} s (TimeoutStopSec={limit}) {s}")
            nspawn.note(f"[pid1]   where the stop went: {_stop_steps(machine, unit, cursor)}")
            assert s["ActiveState"] == "inactive", s
            # exited by itself (CLD_EXITED = 1) with status 0: not SIGKILLed at the timeout
            assert (s["Result"], s["ExecMainCode"], s["ExecMainStatus"]) == ("success", "1", "0"), s
            assert took < _seconds(limit), (unit, took, limit)


def _stop_steps(machine: Machine, unit: str, cursor: str) -> str:
    """The daemon's own account of its stop: the seconds each step took (an agent's
    `*_agent_stopped` line), and when it logged `service_stopped`."""
    found = []
    for entry in machine.journal(unit, since=cursor):
        try:
            line = json.loads(str(entry.get("MESSAGE", "")))
        except ValueError:
            continue
        if not isinstance(line, dict):
            continue
        event = str(line.get("event", ""))
        if event.endswith("_agent_stopped"):
            found.append(" ".join(f"{k}={v}" for k, v in line.items() if k.endswith("_s")))
        elif event in ("service_stopping", "service_stopped"):
            found.append(f"{event} at {line.get('timestamp')}")
    return "; ".join(found) or "(no stop lines in the journal)"


def _seconds(span: str) -> float:
    """systemd's time span ("45s", "1min 30s") in seconds."""
    units = {"min": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(min|ms|s)", span):
        total += int(number) * units[unit]
    assert total, span
    return total
