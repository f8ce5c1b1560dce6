"""records.py: what list/get answer, from a domain and its record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agents.compute import driver
from agents.compute.records import Domain, building_info, instance_info, read_record

from .fixtures import FLAVORS, INSTANCE, KERNEL_IMAGE, NETWORKS, PATHS_KERNEL, spec


def _domain(
    state: str = "running", active: bool = True, fault: str | None = None, started: bool = True
) -> Domain:
    s = spec()
    ports = [driver.PortNetwork(p, NETWORKS.get(p.network_id)) for p in s.ports]
    guest = driver.get_guest_config(
        s, FLAVORS["m1.tiny"], KERNEL_IMAGE, PATHS_KERNEL, ports, "test"
    )
    assert guest.metadata is not None
    guest.metadata.fault = fault
    guest.metadata.started_at = datetime.now(UTC) - timedelta(seconds=30) if started else None
    return Domain(uuid=INSTANCE, name=guest.name, state=state, active=active, xml=guest.to_xml())  # type: ignore[arg-type]


def test_running_instance() -> None:
    domain = _domain()
    record = read_record(domain)
    assert record is not None
    info = instance_info(domain, record, "node1", building=False)
    assert (info.state, info.name, info.flavor, info.image, info.host) == (
        "running",
        "web-1",
        "m1.tiny",
        "tiny",
        "node1",
    )
    assert info.uptime_s is not None and 29 <= info.uptime_s < 60
    assert info.ports[0].id == spec().ports[0].id and info.ports[0].instance_uuid == INSTANCE


def test_fault_wins_over_libvirt_state_and_building_over_shutoff() -> None:
    errored = _domain(
        state="shutoff", active=False, fault="timeout waiting for vif-plugged", started=False
    )
    record = read_record(errored)
    assert record is not None
    info = instance_info(errored, record, "node1", building=False)
    assert (info.state, info.fault, info.uptime_s) == (
        "error",
        "timeout waiting for vif-plugged",
        None,
    )
    half = _domain(state="shutoff", active=False, started=False)
    half_record = read_record(half)
    assert half_record is not None
    assert instance_info(half, half_record, "node1", building=True).state == "building"
    assert instance_info(half, half_record, "node1", building=False).state == "shutoff"


def test_foreign_or_broken_domains_have_no_record() -> None:
    foreign = Domain(
        uuid=INSTANCE,
        name="x",
        state="running",
        active=True,
        xml="<domain type='test'><name>x</name><uuid>u</uuid><memory>1</memory>"
        "<vcpu>1</vcpu></domain>",
    )
    assert read_record(foreign) is None
    broken = Domain(uuid=INSTANCE, name="x", state="running", active=True, xml="<domain")
    assert read_record(broken) is None


def test_building_info() -> None:
    info = building_info(spec(), "node1")
    assert (info.state, info.name, info.uuid) == ("building", "web-1", INSTANCE)
