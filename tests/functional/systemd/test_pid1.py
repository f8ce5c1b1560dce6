"""The three units under a real systemd (PID 1), installed by tools/install.sh as an operator would.

A cached Debian 12 root (nspawn.py: debootstrap + install.sh's prerequisites) is booted
with `systemd-nspawn --boot` in a network namespace of its own; the checkout is copied
in and `tools/install.sh` runs inside, so the venv, /etc/agents, the units, the accounts
and `systemctl enable --now agents-controller` are exactly an operator's. The configs
are in /etc/agents before the install (install.sh keeps existing files): a control
exchange, an events topic, an events queue and a host name of this test only, so
nothing mixes with other users of the machine's RabbitMQ; the test deletes those queues
and the exchange afterwards. The broker is the machine's, reached through relay.py.

What is proved, with systemd's own view (`systemctl show`, the journal):

- each unit is `activating` while its daemon runs but cannot be ready (no broker), and
  `active (running)` only once the broker is back: the Type=notify READY=1 path;
- journald holds the daemons' JSON lines; a build asked of the controller's API shows
  its request_id and instance_uuid in `journalctl -o json -u compute-agent`;
- the l2-agent's process has CAP_NET_ADMIN and nothing else (/proc/PID/status);
- `systemd-analyze security` of the installed units (printed; docs/operations.md);
- a daemon frozen with SIGSTOP is killed by the watchdog and restarted (WatchdogSec
  lowered to 5 s by a drop-in in /etc/systemd/system/UNIT.d/, as `systemctl edit` does);
- a daemon killed with SIGKILL is restarted (Restart=on-failure);
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
from agents.lab.procs import REPO
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


def edit(text: str, old: str, new: str, name: str) -> str:
    """One operator edit of a sample config; a sample that changed fails here, clearly."""
    assert old in text, f"etc/{name} no longer contains {old!r}: update test_pid1.py"
    return text.replace(old, new)


@dataclass
class Machine:
    container: Container
    host: str
    broker: Relay
    scores: dict[str, str]

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

    def journal(self, unit: str, since: str | None = None) -> list[dict[str, object]]:
        cmd = ["journalctl", "--no-pager", "-o", "json", "-u", unit]
        if since:
            cmd += ["--after-cursor", since]
        return [json.loads(line) for line in self.run(*cmd).splitlines() if line.strip()]

    def cursor(self) -> str:
        out = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor")
        return out.strip().rpartition("-- cursor: ")[2]


def write_configs(etc: Path, scope: BrokerScope, host: str, topic: str, queue: str) -> None:
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
    compute = samples["compute-agent.conf"]
    compute = edit(compute, "#host = node1\n", f"host = {host}\n", "compute-agent.conf")
    compute = edit(
        compute,
        "libvirt_uri = qemu:///system\n",
        "libvirt_uri = test:///default\n",
        "compute-agent.conf",
    )
    compute = edit(compute, "domain_type = qemu\n", "domain_type = test\n", "compute-agent.conf")
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
    relays: list[Relay] = []
    try:
        lower = nspawn.pid1_root()
        with timed("pid1: prepare a throwaway copy"):
            overlay = Overlay(lower)
            root = overlay.root
            nspawn.copy_checkout(root / "root/agents")
            write_configs(root / "etc/agents", scope, host, topic, events_queue)
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
        with timed("pid1: tools/install.sh inside"):
            env = {**nspawn.pip_environment(), **nspawn.proxy_env()}
            out = container.run(["bash", "/root/agents/tools/install.sh"], env=env, timeout=900)
        print(out.stdout[-2000:])
        proxy.stop()
        relays.remove(proxy)
        container.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "/var/lib/agents/images/tiny.qcow2", "16M"]
        )
        yield Machine(container, host, broker, scores={})
    finally:
        with timed("pid1: power off and clean up"):
            if container is not None:
                container.poweroff()
            for relay in relays:
                relay.stop()
            if overlay is not None:
                overlay.remove()
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


def test_journal_has_the_json_fields_of_a_build(machine: Machine) -> None:
    """A build asked of the controller shows up in journalctl -o json -u compute-agent."""
    with timed("pid1: build through the controller, read the journal"):
        status, body = machine.api("POST", "/v1/instances", {"host": machine.host})
        assert status == 202, body
        assert isinstance(body, dict)
        request_id = body["request_id"]
        instance = body["instances"][0]["uuid"]
        deadline = time.monotonic() + 90
        while True:
            status, inst = machine.api("GET", f"/v1/instances/{instance}")
            assert status == 200, inst
            assert isinstance(inst, dict)
            if inst["task"] is None and inst["state"] in ("running", "error"):
                break
            assert time.monotonic() < deadline, f"build not done after 90 s: {inst}"
            time.sleep(0.5)
        assert inst["state"] == "running", inst

        entries = machine.journal("compute-agent.service")
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
    # Each line carries its level as journald's PRIORITY (the `<N>` prefix is stripped),
    # so `journalctl -p warning` finds the daemons' warnings and errors.
    levels = {(line.get("level"), e.get("PRIORITY")) for e, line in structured}
    assert ("info", "6") in levels, levels
    assert all(prio == {"debug": "7", "info": "6", "warning": "4", "error": "3"}.get(str(lvl), prio)
               for lvl, prio in levels), levels  # fmt: skip


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


def test_stop_ends_each_within_its_timeout(machine: Machine) -> None:
    with timed("pid1: systemctl stop, each"):
        for unit in (*AGENTS, CONTROLLER):
            limit = machine.show(unit, "TimeoutStopUSec")["TimeoutStopUSec"]
            began = time.monotonic()
            machine.run("systemctl", "stop", unit, timeout=120)
            took = time.monotonic() - began
            s = machine.show(unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
            nspawn.note(f"[pid1] systemctl stop {unit}: {took:.1f} s (TimeoutStopSec={limit}) {s}")
            assert s["ActiveState"] == "inactive", s
            # exited by itself (CLD_EXITED = 1) with status 0: not SIGKILLed at the timeout
            assert (s["Result"], s["ExecMainCode"], s["ExecMainStatus"]) == ("success", "1", "0"), s
            assert took < _seconds(limit), (unit, took, limit)


def _seconds(span: str) -> float:
    """systemd's time span ("45s", "1min 30s") in seconds."""
    units = {"min": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(min|ms|s)", span):
        total += int(number) * units[unit]
    assert total, span
    return total
