"""Wire models: field validation, envelopes, version handling."""

from __future__ import annotations

import uuid

import pytest

from common.errors import InvalidMessage
from common.messages import (
    BuildInstance,
    InstanceSpec,
    Port,
    PortCreated,
    envelope,
    new_request_id,
    open_envelope,
    salvage_uuid,
)

NET = uuid.uuid4()


def port(**kw: object) -> Port:
    fields: dict[str, object] = {"id": uuid.uuid4(), "network_id": NET, "mac": "fa:16:3e:00:00:01"}
    fields.update(kw)
    return Port.model_validate(fields)


def build(**kw: object) -> BuildInstance:
    spec: dict[str, object] = {
        "uuid": str(uuid.uuid4()),
        "name": "vm-1",
        "flavor": "m1.tiny",
        "image": "tiny",
        "ports": [port().model_dump(mode="json")],
    }
    spec.update(kw)
    return BuildInstance.model_validate(
        {"request_id": new_request_id(), "host": "node1", "instance": spec}
    )


def test_round_trip_through_envelope() -> None:
    msg = build()
    wire = envelope(msg)
    assert wire["schema"] == "build_instance" and wire["version"] == BuildInstance.VERSION
    assert open_envelope(wire) == msg
    assert open_envelope(wire, expect=BuildInstance) == msg


@pytest.mark.parametrize(
    "mac, problem",
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "all-zero"),
        ("fe:16:3e:00:00:01", "0xfe"),
        ("fa:16:3e:00:00", "six colon-separated"),
        ("zz:16:3e:00:00:01", "six colon-separated"),
    ],
)
def test_bad_macs_are_refused_with_reason(mac: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        port(mac=mac)


def test_mac_is_normalised_to_lower_case() -> None:
    assert port(mac="FA:16:3E:AA:BB:CC").mac == "fa:16:3e:aa:bb:cc"


@pytest.mark.parametrize("mtu", [0, 67, 9001, -1])
def test_mtu_out_of_range_is_refused(mtu: int) -> None:
    with pytest.raises(ValueError, match="mtu"):
        port(mtu=mtu)


@pytest.mark.parametrize(
    "name", ["", "-x", "a" * 64, "vm<1>", "a&b", "it's", 'q"uote', "sp ace", "../etc", "é"]
)
def test_hostile_instance_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        build(name=name)


def test_invalid_message_names_field_and_value() -> None:
    wire = envelope(build())
    wire["data"]["instance"]["ports"][0]["mac"] = "01:00:00:00:00:00"
    with pytest.raises(InvalidMessage) as err:
        open_envelope(wire)
    text = str(err.value)
    assert "instance.ports.0.mac" in text and "01:00:00:00:00:00" in text


def test_unknown_schema_and_wrong_major_version_are_refused() -> None:
    wire = envelope(build())
    with pytest.raises(InvalidMessage, match="unknown schema"):
        open_envelope({**wire, "schema": "launch_missiles"})
    with pytest.raises(InvalidMessage, match="version '2.0' is not readable"):
        open_envelope({**wire, "version": "2.0"})
    with pytest.raises(InvalidMessage, match="expected port_created"):
        open_envelope(wire, expect=PortCreated)


def test_newer_minor_version_with_extra_fields_is_read() -> None:
    wire = envelope(build())
    wire["version"] = "1.7"
    wire["data"]["future_field"] = {"x": 1}
    assert isinstance(open_envelope(wire), BuildInstance)


@pytest.mark.parametrize("garbage", [None, 42, "text", [], {"schema": "build_instance", "data": 3}])
def test_garbage_is_an_invalid_message_not_a_crash(garbage: object) -> None:
    with pytest.raises(InvalidMessage):
        open_envelope(garbage, expect=BuildInstance)


def test_salvage_uuid_finds_instance_in_broken_message() -> None:
    inst = uuid.uuid4()
    raw = {"data": {"instance": {"uuid": str(inst), "name": "<bad>"}}}
    assert salvage_uuid(raw, "uuid") == inst
    assert salvage_uuid({"data": {"uuid": "not-a-uuid"}}, "uuid") is None


def test_port_limits_per_instance() -> None:
    ports = [port().model_dump(mode="json") for _ in range(17)]
    with pytest.raises(ValueError, match="ports"):
        build(ports=ports)
    assert InstanceSpec(uuid=uuid.uuid4(), name="a", flavor="f", image="i").ports == []
