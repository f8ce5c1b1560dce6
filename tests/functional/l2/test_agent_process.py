"""The l2-agent as a real process against the real broker, wiring in a test namespace."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from agents.l2.store import PortStore
from agents.lab.procs import console_script, free_port, run, wait_for
from common.messages import (
    PingReply,
    Port,
    PortCreated,
    PortDeleted,
    PortList,
    PortUpdated,
    envelope,
    new_request_id,
)
from common.rpc import L2_TOPIC, Event, EventWatcher, Messaging, watching
from tests.functional.l2.conftest import (
    VXLAN_NET,
    L2Env,
    is_up,
    kind,
    ns_links,
    spawn_agent,
    wait_event,
)

pytestmark = pytest.mark.functional


def wait_serving(messaging: Messaging, host: str) -> PingReply:
    client = messaging.rpc_client(L2_TOPIC, host, timeout=2)

    def pong() -> PingReply | None:
        try:
            reply = client.call("ping")
            return reply if isinstance(reply, PingReply) else None
        except Exception:
            return None

    result: PingReply = wait_for(pong, 30, interval=0.2, what="l2-agent ping")
    return result


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR2)  # every thread's stack into the log first
            time.sleep(0.5)
            proc.kill()
            proc.wait(5)
            return -9
    return proc.returncode


def test_port_created_wires_tap_into_bridge_and_reports_vif_plugged(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        pong = wait_serving(messaging, l2env.host)
        assert pong.kind == "l2" and pong.host == l2env.host

        port = Port(
            id=uuid.uuid4(),
            network_id=uuid.UUID(VXLAN_NET),
            mac="fa:16:3e:12:34:56",
            instance_uuid=uuid.uuid4(),
        )
        rid = new_request_id()
        messaging.rpc_client(L2_TOPIC, l2env.host).cast(
            "port_created", PortCreated(request_id=rid, host=l2env.host, port=port), request_id=rid
        )
        event = wait_event(vif_watcher, "port.vif_plugged", port.id)
        tap, bridge = f"tap{str(port.id)[:11]}", f"brq{VXLAN_NET[:11]}"
        assert event.payload.device == tap and event.payload.bridge == bridge
        assert event.payload.request_id == rid and event.payload.instance_uuid == port.instance_uuid
        assert event.publisher_id == f"l2-agent.{l2env.host}"

        links = ns_links(l2env.ns)
        assert kind(links[tap]) == "tun" and is_up(links[tap])
        assert links[tap]["master"] == bridge
        assert links[tap]["address"] == "fe:16:3e:12:34:56"
        assert links[tap]["mtu"] == 1450
        assert kind(links[bridge]) == "bridge" and is_up(links[bridge])
        assert links["vxlan-1001"]["master"] == bridge

        listed = messaging.rpc_client(L2_TOPIC, l2env.host).call("list_ports")
        assert isinstance(listed, PortList)
        assert [(p.port.id, p.state, p.device) for p in listed.ports] == [(port.id, "wired", tap)]
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]


def cast(messaging: Messaging, host: str, method: str, payload: object) -> None:
    # A raw value goes through the serializer untouched: what a buggy sender would put
    # on the wire.
    messaging.rpc_client(L2_TOPIC, host).cast(method, payload)  # type: ignore[arg-type]


def created(host: str, port: Port) -> PortCreated:
    return PortCreated(request_id=new_request_id(), host=host, port=port)


def test_bad_input_is_refused_keeps_serving_and_makes_nothing(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        wait_serving(messaging, l2env.host)
        net = uuid.UUID(VXLAN_NET)
        bad_ids = {}
        for label, field, value in (
            ("multicast", "mac", "fb:16:3e:00:00:01"),
            ("zero", "mac", "00:00:00:00:00:00"),
            ("fe", "mac", "fe:16:3e:00:00:01"),
            ("mtu", "mtu", 65000),
        ):
            pid = uuid.uuid4()
            wire = envelope(
                created(l2env.host, Port(id=pid, network_id=net, mac="fa:16:3e:00:00:01"))
            )
            wire["data"]["port"][field] = value
            cast(messaging, l2env.host, "port_created", wire)
            bad_ids[label] = pid
        unknown = Port(id=uuid.uuid4(), network_id=uuid.uuid4(), mac="fa:16:3e:00:00:02")
        cast(messaging, l2env.host, "port_created", created(l2env.host, unknown))
        for garbage in ("garbage", {"no": "envelope"}, [1, 2, 3], None):
            cast(messaging, l2env.host, "port_created", garbage)
            cast(messaging, l2env.host, "port_deleted", garbage)
        good = Port(id=uuid.uuid4(), network_id=net, mac="fa:16:3e:00:00:03")
        cast(messaging, l2env.host, "port_created", created(l2env.host, good))

        seen: list[Event] = []
        wait_event(vif_watcher, "port.vif_plugged", good.id, seen=seen)
        # A refused message fails no build (a garbled copy may carry a real port's id):
        # it is logged and reported as agent.message_rejected, never as plug_failed. A
        # valid message for a network this host lacks is a wiring failure: plug_failed.
        for label, pid in bad_ids.items():
            assert not [e for e in seen if getattr(e.payload, "port_id", None) == pid], label
            assert str(pid) in (tmp_path / "agent.log").read_text(), label
        event = next((e for e in seen if getattr(e.payload, "port_id", None) == unknown.id), None)
        event = event or wait_event(vif_watcher, "port.plug_failed", unknown.id)
        assert "is not configured" in event.payload.reason

        wait_serving(messaging, l2env.host)  # still answering
        links = ns_links(l2env.ns)
        assert f"tap{str(good.id)[:11]}" in links
        for pid in [*bad_ids.values(), unknown.id]:
            assert f"tap{str(pid)[:11]}" not in links
        assert f"brq{str(unknown.network_id)[:11]}" not in links
        assert proc.poll() is None
    finally:
        code = stop(proc)
    assert code == 0


def test_deleted_tap_or_bridge_is_rewired_within_a_second(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        wait_serving(messaging, l2env.host)
        p = Port(id=uuid.uuid4(), network_id=uuid.UUID(VXLAN_NET), mac="fa:16:3e:00:00:04")
        cast(messaging, l2env.host, "port_created", created(l2env.host, p))
        wait_event(vif_watcher, "port.vif_plugged", p.id)
        tap, bridge = f"tap{str(p.id)[:11]}", f"brq{VXLAN_NET[:11]}"

        def wired() -> bool:
            links = ns_links(l2env.ns)
            return (
                tap in links
                and links[tap].get("master") == bridge
                and is_up(links[tap])
                and links.get("vxlan-1001", {}).get("master") == bridge
            )

        for victim in (tap, bridge):
            run(["ip", "-n", l2env.ns, "link", "del", victim])
            t0 = time.monotonic()
            wait_for(wired, 1.0, interval=0.02, what=f"re-wire after deleting {victim}")
            elapsed = time.monotonic() - t0
            assert elapsed < 1.0
            wait_event(vif_watcher, "port.vif_plugged", p.id, timeout=2)
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]


def test_kill_9_leaves_a_readable_record_and_restart_reconciles(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    ports = [
        Port(id=uuid.uuid4(), network_id=uuid.UUID(VXLAN_NET), mac=f"fa:16:3e:00:01:{i:02x}")
        for i in range(120)
    ]
    try:
        wait_serving(messaging, l2env.host)
        for p in ports:
            cast(messaging, l2env.host, "port_created", created(l2env.host, p))
        plugged: set[uuid.UUID] = set()

        def some_plugged() -> bool:
            plugged.update(
                e.payload.port_id
                for e in vif_watcher.poll(0.05)
                if e.event_type == "port.vif_plugged"
            )
            return len(plugged) >= 30

        wait_for(some_plugged, 20, interval=0, what="30 ports plugged")
        proc.send_signal(signal.SIGKILL)  # mid-stream: writes may be in flight
        proc.wait(5)
    finally:
        stop(proc)

    state = l2env.state_dir / "l2-agent" / l2env.host / "ports"
    records = PortStore(state).load()  # every file parses: no torn record
    assert not list(state.glob("*.corrupt"))
    assert len(records) >= 30
    # A device with our naming that no record explains appears while the agent is down.
    stray = f"tap{str(uuid.uuid4())[:11]}"
    run(["ip", "-n", l2env.ns, "tuntap", "add", "dev", stray, "mode", "tap"])
    vif_watcher.poll(0.2)  # drop what the first run said

    again = spawn_agent(l2env, tmp_path / "agent2.log")
    try:
        wait_serving(messaging, l2env.host)
        reported: set[uuid.UUID] = set()

        def all_reported() -> bool:
            reported.update(
                e.payload.port_id
                for e in vif_watcher.poll(0.05)
                if e.event_type == "port.vif_plugged"
            )
            return set(records) <= reported

        wait_for(all_reported, 20, interval=0, what="vif_plugged again for every recorded port")
        links = ns_links(l2env.ns)
        bridge = f"brq{VXLAN_NET[:11]}"
        for pid in records:
            assert links[f"tap{str(pid)[:11]}"].get("master") == bridge
        # no record explains it, nothing proves it unwanted: kept (and logged)
        assert stray in links
        assert "unknown_device_kept" in (tmp_path / "agent2.log").read_text()
        recorded_taps = {f"tap{str(pid)[:11]}" for pid in records}
        ours = {n for n in links if n.startswith("tap")}
        assert ours <= recorded_taps | {f"tap{str(p.id)[:11]}" for p in ports} | {stray}
    finally:
        code = stop(again)
    assert code == 0, (tmp_path / "agent2.log").read_text()[-3000:]


def test_metrics_heartbeat_version_and_graceful_stop(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    port_no = free_port()
    l2env.conf.write_text(
        l2env.conf.read_text().replace("listen = 127.0.0.1:0", f"listen = 127.0.0.1:{port_no}")
    )
    events_topic = l2env.config().messaging.events_topic
    with watching(l2env.config().messaging, [f"{events_topic}.#.info"]) as agent_watch:
        proc = spawn_agent(l2env, tmp_path / "agent.log")
        try:
            pong = wait_serving(messaging, l2env.host)
            version = subprocess.run(
                [console_script("l2-agent"), "--version"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            assert version == f"l2-agent {pong.version}"
            p = Port(id=uuid.uuid4(), network_id=uuid.UUID(VXLAN_NET), mac="fa:16:3e:00:00:05")
            cast(messaging, l2env.host, "port_created", created(l2env.host, p))
            wait_event(vif_watcher, "port.vif_plugged", p.id)
            cast(messaging, l2env.host, "report_state", None)

            def heartbeat_with_port() -> object:
                for e in agent_watch.poll(0.2):
                    if (
                        e.event_type == "agent.heartbeat"
                        and e.payload.host == l2env.host
                        and e.payload.counts.get("wired") == 1
                    ):
                        return e
                return None

            beat = wait_for(heartbeat_with_port, 10, interval=0, what="heartbeat counting 1 wired")
            assert beat.payload.kind == "l2" and beat.payload.version == pong.version
            assert beat.payload.uptime_s > 0

            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{port_no}/metrics", timeout=5)
                .read()
                .decode()
            )
            assert 'l2_agent_plugs_total{result="wired"} 1.0' in text
            assert 'l2_agent_step_seconds_count{step="tap"} 1.0' in text
            assert 'l2_agent_ports{state="wired"} 1.0' in text
            assert "l2_agent_reconcile_seconds_count 1.0" in text
        finally:
            code = stop(proc)
    assert code == 0


def test_rapid_create_delete_create_and_duplicates_end_as_the_last_message_asks(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        wait_serving(messaging, l2env.host)
        net = uuid.UUID(VXLAN_NET)
        alive = Port(id=uuid.uuid4(), network_id=net, mac="fa:16:3e:00:00:06")
        dead = Port(id=uuid.uuid4(), network_id=net, mac="fa:16:3e:00:00:07")

        def deleted(p: Port) -> PortDeleted:
            return PortDeleted(request_id=new_request_id(), host=l2env.host, port_id=p.id)

        for _ in range(3):
            cast(messaging, l2env.host, "port_created", created(l2env.host, alive))
            cast(messaging, l2env.host, "port_deleted", deleted(alive))
        cast(messaging, l2env.host, "port_created", created(l2env.host, alive))
        cast(messaging, l2env.host, "port_created", created(l2env.host, alive))  # duplicate
        cast(messaging, l2env.host, "port_deleted", deleted(dead))  # delete before create...
        cast(messaging, l2env.host, "port_created", created(l2env.host, dead))
        cast(messaging, l2env.host, "port_deleted", deleted(dead))  # ...and the last word
        cast(
            messaging,
            l2env.host,
            "port_updated",  # an update never revives a deleted port
            PortUpdated(request_id=new_request_id(), host=l2env.host, port=dead),
        )

        counts = {"alive_plugged": 0, "dead_unplugged": 0}

        def all_answered() -> bool:
            for e in vif_watcher.poll(0.1):
                pid = e.payload.port_id
                if e.event_type == "port.vif_plugged" and pid == alive.id:
                    counts["alive_plugged"] += 1
                if e.event_type == "port.vif_unplugged" and pid == dead.id:
                    counts["dead_unplugged"] += 1
            # Every create is answered (5 for the live port); the dead port's two deletes
            # (the one that came first, and the last word) each report vif_unplugged.
            return counts["alive_plugged"] >= 5 and counts["dead_unplugged"] >= 2

        wait_for(all_answered, 15, interval=0, what="every message answered")
        listed = messaging.rpc_client(L2_TOPIC, l2env.host).call("list_ports")
        assert isinstance(listed, PortList) and proc.poll() is None
        assert [(p.port.id, p.state) for p in listed.ports] == [(alive.id, "wired")]
        assert listed.ports[0].device == f"tap{str(alive.id)[:11]}"
        links = ns_links(l2env.ns)
        assert links[f"tap{str(alive.id)[:11]}"]["master"] == f"brq{VXLAN_NET[:11]}"
        assert f"tap{str(dead.id)[:11]}" not in links
    finally:
        code = stop(proc)
    assert code == 0


def test_a_missing_namespace_fails_the_start_clearly(l2env: L2Env, tmp_path: Path) -> None:
    l2env.conf.write_text(
        l2env.conf.read_text().replace(f"namespace = {l2env.ns}", "namespace = l2-no-such-ns")
    )
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    assert proc.wait(30) != 0
    log = (tmp_path / "agent.log").read_text()
    assert "l2-no-such-ns" in log and "setns" in log
    assert "l2-no-such-ns" not in run(["ip", "netns", "list"]).stdout  # not created either


def test_port_work_taken_before_a_kill_is_replayed_on_start(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    """What a kill -9 leaves: a port message on the journal, acked by the broker long ago."""
    from common.journal import Journal

    port = Port(id=uuid.uuid4(), network_id=uuid.UUID(VXLAN_NET), mac="fa:16:3e:12:34:99")
    journal = Journal(l2env.state_dir / "l2-agent" / l2env.host / "journal")
    journal.add("port_created", str(port.id), envelope(created(l2env.host, port)))
    journal.close()
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        event = wait_event(vif_watcher, "port.vif_plugged", port.id)
        assert event.payload.device == f"tap{str(port.id)[:11]}"
        assert kind(ns_links(l2env.ns)[f"tap{str(port.id)[:11]}"]) == "tun"
        wait_for(
            lambda: (
                not list((l2env.state_dir / "l2-agent" / l2env.host / "journal").glob("*.json"))
            ),
            10,
            what="the journal to be emptied",
        )
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]


def test_malformed_rpc_messages_get_a_named_line_and_no_traceback(
    l2env: L2Env, messaging: Messaging, tmp_path: Path
) -> None:
    """Straight onto the wire, as a hostile or broken sender would put them."""
    import json

    import kombu

    from common.errors import RemoteError

    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        wait_serving(messaging, l2env.host)
        port = Port(id=uuid.uuid4(), network_id=uuid.UUID(VXLAN_NET), mac="fa:16:3e:00:00:09")
        good = envelope(created(l2env.host, port))
        bodies = [
            {"method": "drop_all_tables", "args": {}},
            {"method": None, "args": {}},
            {"method": "_private", "args": {}},
            {"method": "port_created", "args": "not an object"},
            {"method": "port_created", "args": {"payload": good, "ctxt": 1, "extra": 2}},
            {"method": "port_created", "args": {"payload": good}, "version": "9.9"},
            {"method": "list_ports", "args": {"unexpected": True}},
        ]
        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
            producer = conn.Producer()
            exchange = kombu.Exchange(l2env.exchange, type="topic", durable=True)
            for body in bodies:
                wire = {"oslo.version": "2.0", "oslo.message": json.dumps(body)}
                producer.publish(wire, exchange=exchange, routing_key=f"l2-agent.{l2env.host}")
        # A caller of an unknown method hears why, at once.
        with pytest.raises(RemoteError, match="unknown method"):
            messaging.rpc_client(L2_TOPIC, l2env.host, timeout=5).call("no_such_call")
        pong = wait_serving(messaging, l2env.host)  # still serving
        assert pong.host == l2env.host
    finally:
        code = stop(proc)
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    for needle in ("unknown method 'drop_all_tables'", "args must be an object",
                   "public method name", "unexpected argument(s): ctxt, extra",
                   "Endpoint does not support RPC version 9.9",
                   "unknown method 'no_such_call'"):  # fmt: skip
        assert needle in log, needle
    assert code == 0
