"""Settings of a clustered broker: multi-node transport URLs checked at load, quorum
queue arguments (delivery limit, dead-lettering) and the kombu failover connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import BaseConfig, MessagingSettings, load
from common.errors import ConfigError
from common.rpc import (
    RPC_QUEUE_MAX_LENGTH,
    RPC_QUEUE_TTL_S,
    Messaging,
    bounded_queue_args,
    connection,
    dead_letter_queue_name,
    declared_arguments,
)

CLUSTER = "rabbit://u:p@127.0.0.1:5681,u:p@127.0.0.1:5682,u:p@127.0.0.1:5683/"


def _load(tmp_path: Path, text: str) -> BaseConfig:
    path = tmp_path / "shared.conf"
    path.write_text(text)
    return load(BaseConfig, [path])


def test_a_multi_node_url_loads(tmp_path: Path) -> None:
    cfg = _load(tmp_path, f"[messaging]\ntransport_url = {CLUSTER}\nqueue_type = quorum\n")
    assert cfg.messaging.transport_url == CLUSTER
    assert cfg.messaging.delivery_limit == 20


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("rabbit://u:p@h1:5672,u:p@h1:5672/", "broker 2 ('h1:5672') is listed twice"),
        ("rabbit://u:p@h1:5672,u:p@h2:99999/", "broker 2 ('h2:99999') has a bad port '99999'"),
        ("rabbit://u:p@h1:5672,u:p@:5672/", "broker 2 (':5672') has no valid host"),
        ("rabbit://u:p@h1:x/", "broker 1 ('h1:x') has a bad port 'x'"),
        ("rabbit:///", "names no broker host"),
    ],
)
def test_a_bad_broker_in_the_list_is_named(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f"[messaging]\ntransport_url = {url}\n")
    assert "transport_url" in str(err.value) and problem in str(err.value)


@pytest.mark.parametrize("limit", ["0", "1001", "many"])
def test_delivery_limit_is_checked(tmp_path: Path, limit: str) -> None:
    with pytest.raises(ConfigError, match=f"delivery_limit.*{limit}"):
        _load(tmp_path, f"[messaging]\ndelivery_limit = {limit}\n")


def test_quorum_queues_get_a_delivery_limit_and_a_dead_letter_queue() -> None:
    quorum = MessagingSettings(control_exchange="dep1", queue_type="quorum", delivery_limit=5)
    assert bounded_queue_args(quorum, 100, 60) == {
        "x-max-length": 100,
        "x-message-ttl": 60_000,
        "x-overflow": "drop-head",
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dep1.dead-letter",
    }
    assert dead_letter_queue_name(quorum) == "dep1.dead-letter"
    classic = MessagingSettings(control_exchange="dep1")
    assert bounded_queue_args(classic, 100, 60) == {"x-max-length": 100, "x-message-ttl": 60_000}


def test_the_switch_declares_what_the_daemons_will() -> None:
    quorum = MessagingSettings(queue_type="quorum", delivery_limit=7)
    classic = MessagingSettings()
    ours = bounded_queue_args(classic, 10, 5)
    assert declared_arguments(quorum, ours) == bounded_queue_args(quorum, 10, 5)
    assert declared_arguments(classic, bounded_queue_args(quorum, 10, 5)) == ours
    assert declared_arguments(quorum, {}) == {"x-queue-type": "quorum", "x-delivery-limit": 7}
    assert declared_arguments(classic, {"x-queue-type": "quorum"}) == {}
    # a server's own RPC queue keeps (or, left unbounded by an older release, gets) its
    # bounds beside oslo's arguments; a topic's shared queue has oslo's only
    rpc = {"x-max-length": RPC_QUEUE_MAX_LENGTH, "x-message-ttl": RPC_QUEUE_TTL_S * 1000}
    assert declared_arguments(quorum, rpc, "compute.node1") == {
        "x-queue-type": "quorum", "x-delivery-limit": 7, **rpc, "x-overflow": "drop-head",
    }  # fmt: skip
    assert declared_arguments(classic, {}, "l2-agent.node1") == rpc
    assert declared_arguments(quorum, {}, "compute") == {
        "x-queue-type": "quorum", "x-delivery-limit": 7,
    }  # fmt: skip


def test_oslo_gets_quorum_queues_and_the_delivery_limit() -> None:
    m = Messaging(MessagingSettings(queue_type="quorum", delivery_limit=9))
    rabbit = m.conf.oslo_messaging_rabbit
    assert rabbit.rabbit_quorum_queue and rabbit.rabbit_quorum_delivery_limit == 9
    # reply and fanout queues stay classic: transient quorum reply queues are refused
    # by RabbitMQ 3.10 with this oslo.messaging (docs/operations.md)
    assert not rabbit.rabbit_transient_quorum_queue and not rabbit.rabbit_stream_fanout


def test_the_kombu_connection_fails_over_across_every_node() -> None:
    conn = connection(MessagingSettings(transport_url=CLUSTER))
    ports = sorted(int(url.rsplit(":", 1)[1].split("/")[0]) for url in conn.alt)
    assert ports == [5681, 5682, 5683]
    assert conn.failover_strategy is not None
    props = conn.transport_options["client_properties"]
    assert props["connection_name"].endswith(":kombu")
