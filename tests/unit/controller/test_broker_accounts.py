"""The permissions of each broker account (pure): what the patterns let through.

RabbitMQ matches these patterns as regular expressions against resource names and
routing keys; Python's `re` reads this subset of them the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.controller.broker_accounts import (
    deployment_of,
    grants,
    transport_url,
    user_name,
    write_transport_conf,
)

X = "agents"


def ok(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_l2_agent_publishes_only_its_own_hosts_keys() -> None:
    g = grants("l2", "node2", X)
    assert g.user == "l2-node2"
    for key in ("vif_events.node2.info", "agents_events.node2.error", "controller.agents"):
        assert ok(g.topic_write, key), key
    for key in (
        "vif_events.node1.info",
        "agents_events.node1.info",
        "agents_events.node2.x.info",  # a host "node2.x" is another host
        "compute.node1",
        "compute.node2",
        "l2-agent.node1",
        "controller",
        "agents_events.info",
        "#",
    ):
        assert not ok(g.topic_write, key), key


def test_agents_bind_and_consume_only_their_own_queues() -> None:
    c = grants("compute", "node2", X)
    assert ok(c.topic_read, "compute.node2") and ok(c.topic_read, "vif_events.node2.info")
    for key in ("compute.node1", "vif_events.node1.info", "agents_events.#", "#", "l2-agent.node2"):
        assert not ok(c.topic_read, key), key
    for queue in ("compute.node2", "vif_events.node2.info", "reply_0a1b", "compute_fanout_ab12"):
        assert ok(c.read, queue) and ok(c.configure, queue), queue
    for queue in (
        "compute.node1",
        "l2-agent.node2",
        "vif_events.node1.info",
        "agents-controller.events",
        "amq.gen-xyz",
        "compute.node2x",
    ):
        assert not ok(c.read, queue) and not ok(c.configure, queue), queue
    # nobody but the controller may publish on the default exchange (any queue by name)
    for role in ("compute", "l2"):
        assert not ok(grants(role, "node2", X).write, "amq.default")


def test_the_controller_casts_to_hosts_but_not_as_an_agent() -> None:
    g = grants("controller", None, X, prefix="p-")
    assert g.user == "p-controller"
    assert ok(g.topic_write, "compute.node1") and ok(g.topic_write, "l2-agent.node7")
    assert not ok(g.topic_write, "vif_events.node1.info")
    assert not ok(g.topic_write, "agents_events.node1.info")


def test_names_and_urls() -> None:
    assert user_name("compute", "n1", "t-") == "t-compute-n1"
    with pytest.raises(ValueError, match="role"):
        user_name("admin", "n1")
    url = transport_url("l2-n1", "p/w:@", "10.0.0.1:5671", "/")
    assert url == "rabbit://l2-n1:p%2Fw%3A%40@10.0.0.1:5671/"
    assert transport_url("u", "p", "h:1", "prod") == "rabbit://u:p@h:1/prod"
    dep = deployment_of("rabbit://guest:guest@b1:5672,guest:guest@b2:5672/dev", "x", "ev")
    assert (dep.broker, dep.vhost) == ("b1:5672", "dev")
    assert deployment_of("rabbit://g:g@b1:5672/", "x", "ev", broker="b:5671").broker == "b:5671"


def test_credentials_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "compute-agent.d" / "broker.conf"
    write_transport_conf(path, "rabbit://u:secret@h:5672/")
    assert path.stat().st_mode & 0o777 == 0o600
    assert "transport_url = rabbit://u:secret@h:5672/" in path.read_text()
