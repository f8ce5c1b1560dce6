"""The lab itself (agents/lab): a whole deployment comes up and goes away without a trace.

A controller (SQLite, then a scratch PostgreSQL database), a host with both agents, a
build through agentctl; then `close()` and a look from outside: no namespace, no
process, no queue, no exchange, no database, no directory left. Also when a part fails
to start: the lab removes what it had made so far.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from agents.lab.broker import (
    SHARED_TOPIC_QUEUES,
    BrokerScope,
    deployment_queues,
    host_queues,
    queue_exists,
)
from agents.lab.lab import Lab
from agents.lab.netns import port_open
from agents.lab.procs import LabError, run

pytestmark = pytest.mark.functional

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _exchange_exists(name: str) -> bool:
    import kombu

    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
        try:
            conn.channel().exchange_declare(exchange=name, type="topic", passive=True)
            return True
        except Exception:
            return False


def _pids_of(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_lab_leaves_nothing_behind(root: None, database: str) -> None:
    scope = BrokerScope.new("test-")
    lab = Lab.create(prefix="tlab-", scope=scope, stop_signal=signal.SIGTERM)
    try:
        controller = lab.start_controller(postgres=PG_ADMIN if database == "postgresql" else None)
        scratch = controller.database
        assert (scratch is not None) == (database == "postgresql")
        if scratch is not None:
            assert scratch.exists() and controller.database_url.endswith(scratch.name)
        node = lab.add_host("node1")
        res = lab.agentctl("send", "build", "--name", "web", "--wait")
        assert res.returncode == 0, res.stdout + res.stderr
        netns, lab_dir, port = node.ns.name, lab.dir, controller.port
        queues = [
            *host_queues(node.host),
            *deployment_queues(scope.exchange),
            controller.events_queue,
        ]
        assert all(queue_exists(q) for q in queues), [q for q in queues if not queue_exists(q)]
    finally:
        lab.close()
    assert netns not in run(["ip", "netns", "list"]).stdout
    assert not lab_dir.exists()
    assert not _pids_of(str(lab_dir)), "a process of the lab is still running"
    assert port is not None and not port_open(None, port)
    assert not [q for q in queues if queue_exists(q)]
    # oslo's topic-wide queues, shared by name, go with the last lab (none runs beside)
    assert not [q for q in SHARED_TOPIC_QUEUES if queue_exists(q)]
    assert not _exchange_exists(scope.exchange)
    if scratch is not None:
        assert not scratch.exists()


def test_a_lab_that_fails_to_start_removes_what_it_made(root: None) -> None:
    scope = BrokerScope.new("test-")
    lab = Lab.create(prefix="tlab-", scope=scope)
    try:
        lab.start_controller(settings={"max_count": 0})  # refused by the controller's config
    except LabError as err:
        assert "max_count" in str(err)
    else:
        pytest.fail("the controller started with max_count = 0")
    finally:
        lab.close()
    assert not lab.dir.exists()
    assert lab.controller is not None and not queue_exists(lab.controller.events_queue)
