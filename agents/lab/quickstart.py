"""The README's first command: one host on this machine, a controller, one real guest.

    python -m agents.lab.quickstart up      (tools/quickstart.sh runs this)
    python -m agents.lab.quickstart down    (tools/quickstart.sh --down)

It is a lab (agents.lab) left running: agents-controller in the root namespace (SQLite
in the quickstart's directory, listening on 127.0.0.1:8780, or a free port when that is
taken), a network namespace standing for the host, the broker relayed into it, the
l2-agent and compute-agent started with the systemd units' command lines and configs
rendered from etc/, libvirt through qemu:///embed, and the flat network `provider` of
etc/shared.conf on a veth whose far end is the gateway. The guest is built through the
controller, as an operator would: `agentctl send build --wait`.

`up` writes down what it started (pids with their start times, namespace, queues,
directories) so `down` removes exactly that, and nothing else. It must not touch the
root namespace's links, nor kill a process it cannot prove it started (a pid is only
signalled while its start time is still the one recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from agents.lab.broker import BrokerScope, delete, deployment_queues, host_queues
from agents.lab.host import AGENTS, kill_guests
from agents.lab.lab import Lab
from agents.lab.links import provider_uplink
from agents.lab.procs import REPO, LabError, broker_available, run, start_time, wait_for

GUEST = "demo"
NETWORK = "provider"
UPLINK = "qs-phys"


class Names:
    """The quickstart's names; the environment moves them aside (the e2e test does)."""

    def __init__(self) -> None:
        env = os.environ.get
        self.dir = Path(env("AGENTS_QUICKSTART_DIR", "/run/agents-quickstart"))
        self.netns = env("AGENTS_QUICKSTART_NETNS", "agents-qs")
        self.host = env("AGENTS_QUICKSTART_HOST", "quickstart")
        self.exchange = env("AGENTS_QUICKSTART_EXCHANGE", "agents-quickstart")
        self.port = int(env("AGENTS_QUICKSTART_PORT", "8780"))
        self.image_dir = Path(env("AGENTS_GUEST_IMAGE_DIR", str(REPO / ".cache" / "guest-image")))

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"


def say(text: str) -> None:
    print(f"quickstart: {text}", flush=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _record(pids: list[int]) -> dict[str, int | None]:
    return {str(pid): start_time(pid) for pid in pids}


def _alive(procs: dict[str, int | None]) -> list[int]:
    return [
        int(pid) for pid, started in procs.items() if started and start_time(int(pid)) == started
    ]


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


def up(names: Names) -> int:
    if names.state_file.exists():
        say(f"already up ({names.state_file}); `tools/quickstart.sh --down` first to start over")
        print_reach(json.loads(names.state_file.read_text()))
        return 0
    if not broker_available():
        say("RabbitMQ is not reachable on 127.0.0.1:5672 (rabbitmq-server -detached)")
        return 3
    if run(["ip", "netns", "list"]).stdout.split().count(names.netns):
        say(f"namespace {names.netns} exists but no state file: `ip netns del {names.netns}`")
        return 2
    names.dir.mkdir(parents=True, exist_ok=True)
    scope = BrokerScope(exchange=names.exchange, suffix="")
    lab = Lab(dir=names.dir, scope=scope, image_dir=names.image_dir)
    state: dict[str, Any] = {"dir": str(names.dir), "exchange": names.exchange}
    try:
        controller = lab.start_controller(port=names.port if _port_free(names.port) else None)
        assert controller.proc is not None
        state.update(
            controller=_record([controller.proc.pid]),
            events_queue=controller.events_queue,
            url=controller.url,
        )
        _save(names, state)
        node = lab.add_host(
            "node1",
            driver="qemu",
            host=names.host,
            netns=names.netns,
            l2={"l2": {"physical_interface_mappings": f"physnet1:{UPLINK}"}},
            agents=(),
        )
        state.update(
            netns=names.netns,
            host=names.host,
            embed_root=str(node.embed_root),
            ns_tmp=str(node.ns.tmp),
            relays=_record([p.pid for p in node.ns.relays]),
        )
        _save(names, state)
        provider = lab.networks()[NETWORK]
        if provider.gateway is None or provider.cidr is None:
            raise LabError(f"network {NETWORK} in etc/shared.conf needs cidr and gateway")
        provider_uplink(node, UPLINK, f"{provider.gateway}/{provider.cidr.prefixlen}")
        for agent in AGENTS:
            node.start(agent, wait=False)
        state["agents"] = _record([p.pid for p in node.agents.values()])
        _save(names, state)
        for agent in AGENTS:
            node.wait_serving(agent, timeout=90)
        say(f"controller at {controller.url}, host {names.host} in namespace {names.netns};"
            f" building guest {GUEST}")  # fmt: skip
        started = time.monotonic()
        doc = lab.agentctl_json(
            "send", "build", "--host", names.host, "--name", GUEST, "--network", NETWORK,
            "--wait", "--timeout", "120", timeout=150,
        )  # fmt: skip
        (inst,) = doc["instances"]
        ip = inst["ports"][0]["fixed_ip"]

        def ready() -> bool:
            return "AGENTS-GUEST-READY" in lab.agentctl("console-log", GUEST).stdout

        wait_for(ready, 120, 1, what=f"{GUEST}'s ready line on its console")
        wait_for(lambda: node.pings(ip), 60, 0.5, what=f"{GUEST} to answer ping")
        say(f"guest {GUEST} ({inst['uuid']}) booted and answers ping "
            f"{time.monotonic() - started:.1f}s after the build was sent")  # fmt: skip
        state["guest"] = {"name": GUEST, "uuid": inst["uuid"], "ip": ip}
        state["config"] = str(lab.etc / "agentctl.conf")
        _save(names, state)
        print_reach(state)
        return 0
    except (LabError, TimeoutError, OSError, KeyError, ValueError) as err:
        say(f"failed: {err}")
        print(lab.logs(), file=sys.stderr)
        say("removing what was started")
        with contextlib.suppress(LabError):
            lab.close()
        down(names)
        return 1


def _save(names: Names, state: dict[str, Any]) -> None:
    names.state_file.write_text(json.dumps(state, indent=1))


def print_reach(state: dict[str, Any]) -> None:
    guest = state.get("guest")
    venv_bin = Path(sys.executable).parent
    print()
    if isinstance(guest, dict):
        print(f"Guest {guest['name']} ({guest['uuid']}) runs on host {state['host']}, "
              f"network {NETWORK}, address {guest['ip']}.")  # fmt: skip
        print("Reach it from the host's namespace:")
        print(f"  ip netns exec {state['netns']} ping {guest['ip']}")
    print(f"The controller's API: {state['url']} (log: {state['dir']}/controller/controller.log)")
    print("Use agentctl against it:")
    print(f"  export AGENTS_URL={state['url']}")
    print(f'  export AGENTS_TOKEN="$(cat {state["dir"]}/etc/admin.token)"   # its admin token')
    print(f"  {venv_bin}/agentctl console-log {GUEST}")
    print(f"  {venv_bin}/agentctl list")
    print(f"  {venv_bin}/agentctl show {GUEST} --timeline")
    print(f"  {venv_bin}/agentctl watch")
    print(f"Agent logs: {state['dir']}/node1/log/")
    print("Remove it all: tools/quickstart.sh --down")


def down(names: Names) -> int:
    state = json.loads(names.state_file.read_text()) if names.state_file.exists() else {}
    # Agents first (SIGTERM, as systemd would stop them), then their guests, then the
    # controller and the relays.
    _stop(state.get("agents", {}), grace=20)
    kill_guests(Path(state.get("embed_root", names.dir / "node1" / "libvirt")))
    _stop(state.get("controller", {}), grace=15)
    _stop(state.get("relays", {}), grace=5)
    run(["ip", "netns", "del", state.get("netns", names.netns)], check=False)
    if state.get("ns_tmp"):
        shutil.rmtree(state["ns_tmp"], ignore_errors=True)
    exchange = state.get("exchange", names.exchange)
    queues = host_queues(state.get("host", names.host)) + deployment_queues(exchange)
    if state.get("events_queue"):
        queues.append(state["events_queue"])
    delete(queues, exchange=exchange)
    shutil.rmtree(names.dir, ignore_errors=True)
    say("down: controller, agents, guest, namespace, broker queues and files removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quickstart", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("run as root (network namespaces, taps, QEMU)")
        return 2
    names = Names()
    return up(names) if args.action == "up" else down(names)


if __name__ == "__main__":
    sys.exit(main())
