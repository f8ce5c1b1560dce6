"""The serializer: models out as envelopes, validated again on the way in."""

from __future__ import annotations

import uuid

import pytest

from common.errors import InvalidMessage
from common.messages import DeleteInstance, PortDeleted, envelope
from common.rpc import InvalidPayload, ModelSerializer, expect


def msg() -> DeleteInstance:
    return DeleteInstance(request_id="req-1", host="node1", instance_uuid=uuid.uuid4())


def test_models_travel_as_envelopes_and_come_back() -> None:
    ser = ModelSerializer()
    wire = ser.serialize_entity({}, msg())
    assert wire["schema"] == "delete_instance"
    back = ser.deserialize_entity({}, wire)
    assert isinstance(back, DeleteInstance)
    assert expect(back, DeleteInstance) is back


def test_invalid_envelope_becomes_invalid_payload_not_exception() -> None:
    ser = ModelSerializer()
    wire = envelope(msg())
    wire["data"]["instance_uuid"] = "not-a-uuid"
    got = ser.deserialize_entity({}, wire)
    assert isinstance(got, InvalidPayload)
    with pytest.raises(InvalidMessage, match="instance_uuid"):
        expect(got, DeleteInstance)


def test_expect_validates_bare_dicts_and_refuses_other_models() -> None:
    raw = msg().model_dump(mode="json")
    assert isinstance(expect(raw, DeleteInstance), DeleteInstance)
    with pytest.raises(InvalidMessage, match="expected port_deleted"):
        expect(msg(), PortDeleted)
    with pytest.raises(InvalidMessage):
        expect("garbage", DeleteInstance)


def test_plain_values_pass_through() -> None:
    ser = ModelSerializer()
    assert ser.serialize_entity({}, {"a": 1}) == {"a": 1}
    assert ser.deserialize_entity({}, [1, 2]) == [1, 2]


def test_kombu_url_keeps_every_broker_of_an_oslo_url() -> None:
    from common.rpc import _kombu_url

    assert (
        _kombu_url("rabbit://guest:guest@127.0.0.1:5672/") == "amqp://guest:guest@127.0.0.1:5672/"
    )
    assert _kombu_url("rabbit://a:b@h1:5672,c:d@h2:5673/vh") == (
        "amqp://a:b@h1:5672/vh;amqp://c:d@h2:5673/vh"
    )
