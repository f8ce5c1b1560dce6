"""The README's first command: one host on this machine, one real guest, how to reach it.

    python -m tests.e2e.quickstart up      (tools/quickstart.sh runs this)
    python -m tests.e2e.quickstart down    (tools/quickstart.sh --down)

It uses the e2e lab (tests/e2e/lab.py) unchanged: a network namespace standing for the
host, the broker relayed into it, the l2-agent and compute-agent started with the systemd
units' command lines and configs rendered from etc/, libvirt through qemu:///embed, and
the flat network `provider` of etc/shared.conf on a veth whose far end is the gateway.
Unlike a test, `up` leaves everything running and writes down what it started (pids,
namespace, directories) so `down` removes exactly that, and nothing else.

It must not touch the root namespace's links, nor kill a process it cannot prove it
started (a pid is only signalled while its command line is still the one recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import BrokerScope, _cleanup
from tests.e2e.lab import Lab, LabError, kill_guests, provider_uplink
from tests.hosts import REPO, broker_available, run, wait_for

# Overridable so the e2e test can run the quickstart beside a user's own.
STATE_DIR = Path(os.environ.get("AGENTS_QUICKSTART_DIR", "/run/agents-quickstart"))
NETNS = os.environ.get("AGENTS_QUICKSTART_NETNS", "agents-qs")
HOST = os.environ.get("AGENTS_QUICKSTART_HOST", "quickstart")
EXCHANGE = os.environ.get("AGENTS_QUICKSTART_EXCHANGE", "agents-quickstart")
GUEST = "demo"
NETWORK = "provider"
UPLINK = "qs-phys"
IMAGE_DIR = Path(os.environ.get("AGENTS_GUEST_IMAGE_DIR", REPO / ".cache" / "guest-image"))


def say(text: str) -> None:
    print(f"quickstart: {text}", flush=True)


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid it names one process for good, unlike the pid alone, and survives exec."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(procs: dict[str, int | None]) -> list[int]:
    return [int(pid) for pid, started in procs.items() if started and _started(int(pid)) == started]


def _stop(procs: dict[str, int | None], grace: float) -> None:
    """SIGTERM the recorded processes that still exist, SIGKILL them after `grace`."""
    for pid in _alive(procs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(procs):
        time.sleep(0.2)
    for pid in _alive(procs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def up() -> int:
    state_file = STATE_DIR / "state.json"
    if state_file.exists():
        say(f"already up ({state_file}); `tools/quickstart.sh --down` first to start over")
        print_reach(json.loads(state_file.read_text()))
        return 0
    if not broker_available():
        say("RabbitMQ is not reachable on 127.0.0.1:5672 (rabbitmq-server -detached)")
        return 3
    if run(["ip", "netns", "list"]).stdout.split().count(NETNS):
        say(f"namespace {NETNS} exists but no state file: remove it with `ip netns del {NETNS}`")
        return 2
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    lab = Lab(dir=STATE_DIR, exchange=EXCHANGE, image_dir=IMAGE_DIR)
    try:
        node = lab.add_host(
            "node1", HOST, NETNS, l2={"l2": {"physical_interface_mappings": f"physnet1:{UPLINK}"}}
        )
        provider = lab_network(lab)
        gateway = f"{provider['gateway']}/{provider['cidr'].split('/')[1]}"
        provider_uplink(node, UPLINK, gateway)
        for agent in ("l2-agent", "compute-agent"):
            node.start(agent)
        state: dict[str, Any] = {
            "netns": NETNS,
            "host": HOST,
            "exchange": EXCHANGE,
            "dir": str(STATE_DIR),
            "embed_root": str(node.embed_root),
            "ns_tmp": str(node.ns.tmp),
            "agents": {str(p.pid): _started(p.pid) for p in node.agents.values()},
            "relays": {
                str(p.pid): _started(p.pid) for p in node.ns.procs if p not in node.agents.values()
            },
            "config": [str(f) for f in lab.write_ctl_config()],
        }
        (STATE_DIR / "state.json").write_text(json.dumps(state, indent=1))
        say(f"agents of host {HOST} started in namespace {NETNS}; building guest {GUEST}")
        wait_for(
            lambda: (
                lab.agentctl("ports", "--host", HOST).returncode == 0
                and lab.agentctl("list", "--host", HOST).returncode == 0
            ),
            90,
            1,
            what="both agents to answer",
        )
        started = time.monotonic()
        doc = lab.agentctl_json(
            "send", "build", "--host", HOST, "--name", GUEST, "--network", NETWORK,
            "--wait", "--timeout", "120", timeout=150,
        )  # fmt: skip
        assert isinstance(doc, dict)
        (inst,) = doc["instances"]
        ip = inst["ports"][0]["fixed_ip"]

        def ready() -> bool:
            log = lab.agentctl("console-log", "--host", HOST, GUEST)
            return "AGENTS-GUEST-READY" in log.stdout

        wait_for(ready, 120, 1, what=f"{GUEST}'s ready line on its console")
        wait_for(lambda: node.pings(ip), 60, 0.5, what=f"{GUEST} to answer ping")
        say(f"guest {GUEST} ({inst['uuid']}) booted and answers ping "
            f"{time.monotonic() - started:.1f}s after the build was sent")  # fmt: skip
        state["guest"] = {"name": GUEST, "uuid": inst["uuid"], "ip": ip}
        (STATE_DIR / "state.json").write_text(json.dumps(state, indent=1))
        print_reach(state)
        return 0
    except (LabError, TimeoutError, AssertionError, OSError) as err:
        say(f"failed: {err}")
        print(lab.logs(), file=sys.stderr)
        say("removing what was started")
        lab.close()
        down()
        return 1


def lab_network(lab: Lab) -> dict[str, str]:
    from common.config import BaseConfig, load

    net = load(BaseConfig, [lab.write_ctl_config()[0]]).networks[NETWORK]
    if net.gateway is None or net.cidr is None:
        raise LabError(f"network {NETWORK} in etc/shared.conf needs cidr and gateway")
    return {"gateway": str(net.gateway), "cidr": str(net.cidr)}


def print_reach(state: dict[str, Any]) -> None:
    config = ":".join(str(c) for c in state["config"])
    guest = state.get("guest")
    venv_bin = Path(sys.executable).parent
    print()
    if isinstance(guest, dict):
        print(f"Guest {guest['name']} ({guest['uuid']}) runs on host {state['host']}, "
              f"network {NETWORK}, address {guest['ip']}.")  # fmt: skip
        print("Reach it from the host's namespace:")
        print(f"  ip netns exec {state['netns']} ping {guest['ip']}")
    print("Use agentctl against this deployment:")
    print(f"  export AGENTS_CONFIG={config}")
    print(f"  {venv_bin}/agentctl console-log {GUEST}")
    print(f"  {venv_bin}/agentctl list")
    print(f"  {venv_bin}/agentctl watch")
    print(f"Agent logs: {state['dir']}/node1/log/")
    print("Remove it all: tools/quickstart.sh --down")


def down() -> int:
    state_file = STATE_DIR / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    # Agents first (SIGTERM, as systemd would stop them), then their guests, then relays.
    _stop(state.get("agents", {}), grace=20)
    embed_root = Path(state.get("embed_root", STATE_DIR / "node1" / "libvirt"))
    kill_guests(embed_root)
    _stop(state.get("relays", {}), grace=5)
    run(["ip", "netns", "del", state.get("netns", NETNS)], check=False)
    if state.get("ns_tmp"):
        shutil.rmtree(state["ns_tmp"], ignore_errors=True)
    _cleanup(BrokerScope(exchange=EXCHANGE, suffix="", hosts=[state.get("host", HOST)]))
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    say("down: agents, guest, namespace, broker queues and files removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("run as root (network namespaces, taps, QEMU)")
        return 2
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
