"""Fixtures for the l2-agent's functional tests: a throwaway namespace, configs, an
independent view of its links (`ip -n NS -d -j link`), and a watcher of vif events.

Every namespace made here is deleted afterwards (its links go with it), also when the
test failed. Nothing here touches the root namespace's links.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.l2.settings import L2Config
from agents.lab.configs import unit_command
from agents.lab.procs import REPO, run, unique, wait_for
from common.config import load
from common.rpc import EventWatcher, Messaging, vif_events_topic
from tests.conftest import BrokerScope

FLAT_NET = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"  # "provider" in etc/shared.conf (physnet1)
VXLAN_NET = "5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31"  # "net1" in etc/shared.conf (VNI 1001)
VLAN_NET = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"  # declared by the configs below


@pytest.fixture
def netns(root: None) -> Iterator[str]:
    name = unique("l2t")
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


def ns_links(ns: str) -> dict[str, dict[str, Any]]:
    """The namespace's links as iproute2 reports them (not through pyroute2)."""
    out = run(["ip", "-n", ns, "-d", "-j", "link", "show"]).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def is_up(link: dict[str, Any]) -> bool:
    return "UP" in link.get("flags", [])


def kind(link: dict[str, Any]) -> str | None:
    info = link.get("linkinfo") or {}
    return info.get("info_kind")


def add_veth(ns: str, name: str, peer: str) -> None:
    run(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer])
    run(["ip", "-n", ns, "link", "set", name, "up"])
    run(["ip", "-n", ns, "link", "set", peer, "up"])


@dataclass
class L2Env:
    ns: str
    host: str
    exchange: str
    shared: Path
    conf: Path
    state_dir: Path

    def config(self) -> L2Config:
        return load(L2Config, [self.shared, self.conf])


def write_configs(
    tmp: Path, *, ns: str, host: str, exchange: str, l2_extra: str = ""
) -> tuple[Path, Path]:
    shared = tmp / "shared.conf"
    shared.write_text(
        (REPO / "etc" / "shared.conf")
        .read_text()
        .replace("control_exchange = agents", f"control_exchange = {exchange}")
        + f"\n[network:vlan1]\nuuid = {VLAN_NET}\ntype = vlan\nsegmentation_id = 42\n"
        "physnet = physnet1\nmtu = 1500\n"
    )
    conf = tmp / "l2-agent.conf"
    conf.write_text(
        f"[DEFAULT]\nhost = {host}\nstate_dir = {tmp / 'state'}\nlog_format = json\n"
        f"[metrics]\nlisten = 127.0.0.1:0\n"
        f"[l2]\nnamespace = {ns}\nphysical_interface_mappings = physnet1:uplink0\n"
        f"heartbeat_interval = 30\n{l2_extra}"
    )
    return shared, conf


@pytest.fixture
def l2env(netns: str, broker_scope: BrokerScope, tmp_path: Path) -> L2Env:
    host = broker_scope.host("l2n")
    shared, conf = write_configs(tmp_path, ns=netns, host=host, exchange=broker_scope.exchange)
    return L2Env(netns, host, broker_scope.exchange, shared, conf, tmp_path / "state")


@pytest.fixture
def vif_watcher(l2env: L2Env) -> Iterator[EventWatcher]:
    settings = l2env.config().messaging
    topic = vif_events_topic(l2env.host)
    watcher = EventWatcher(settings, [f"{topic}.info", f"{topic}.error"])
    try:
        yield watcher
    finally:
        watcher.close()


@pytest.fixture
def messaging(l2env: L2Env) -> Iterator[Messaging]:
    m = Messaging(l2env.config().messaging)
    try:
        yield m
    finally:
        m.close()


def wait_event(
    watcher: EventWatcher,
    event_type: str,
    port_id: uuid.UUID | str,
    timeout: float = 10.0,
    seen: list[Any] | None = None,
) -> Any:
    """The first `event_type` event for `port_id`; other events go to `seen`."""

    def find() -> Any:
        for event in watcher.poll(0.2):
            if seen is not None:
                seen.append(event)
            payload = event.payload
            if event.event_type == event_type and str(getattr(payload, "port_id", "")) == str(
                port_id
            ):
                return event
        return None

    return wait_for(find, timeout, interval=0, what=f"{event_type} for {port_id}")


def spawn_agent(env: L2Env, log: Path, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """The l2-agent with its unit's command line, on write_configs()'s files."""
    etc = env.conf.parent
    assert (env.shared, env.conf) == (etc / "shared.conf", etc / "l2-agent.conf")
    fh = log.open("ab")
    try:
        return subprocess.Popen(
            [*unit_command("l2-agent", etc), *(extra or [])],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    finally:
        fh.close()
