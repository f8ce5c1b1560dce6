"""Liveness counted from where the event queue is (Store.heard, Bus `_sent_at`).

A build burst queues thousands of agent events ahead of the heartbeats; while the
controller works through them, an agent whose heartbeat waits in that queue must not be
called down (the scale bench saw every host go `down` and creates refused at 650
instances on 10 hosts). The lag is capped so a stuck queue still ends in `down`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.controller.bus import _sent_at
from agents.controller.db.engine import Database
from agents.controller.db.models import Agent
from agents.controller.db.store import Store


def _store(tmp_path: Path, last_seen_s_ago: float) -> Store:
    db = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    db.upgrade()
    now = datetime.now(UTC)
    with db.writing() as s:
        s.add(
            Agent(
                host="node1",
                kind="compute",
                version="1",
                started_at=now - timedelta(hours=1),
                last_seen=now - timedelta(seconds=last_seen_s_ago),
                uptime_s=3600,
                counts={},
                vcpus=4,
                memory_mb=4096,
            )
        )
    return Store(db, agent_down_time=40)


def _state(store: Store) -> str:
    (entry,) = store.hosts()
    return str(entry["state"])


def test_a_lagging_event_queue_extends_liveness(tmp_path: Path) -> None:
    store = _store(tmp_path, last_seen_s_ago=55)
    assert _state(store) == "down"
    store.heard(datetime.now(UTC) - timedelta(seconds=30))  # applying 30 s old events
    assert _state(store) == "up"
    assert store.live_hosts("compute") == ["node1"]
    store.heard(datetime.now(UTC))  # caught up: silence is silence again
    assert _state(store) == "down"


def test_the_lag_is_capped_and_never_negative(tmp_path: Path) -> None:
    store = _store(tmp_path, last_seen_s_ago=500)
    store.heard(datetime.now(UTC) - timedelta(days=1))
    assert store.event_lag == timedelta(seconds=400)  # 10 x agent_down_time
    assert _state(store) == "down"
    store.heard(datetime.now(UTC) + timedelta(seconds=30))  # a clock ahead of ours
    assert store.event_lag == timedelta(0)


def test_oslo_timestamps_are_read_as_utc() -> None:
    assert _sent_at("2026-11-30 02:00:01.250000") == datetime(
        2026, 11, 30, 2, 0, 1, 250000, tzinfo=UTC
    )
    assert _sent_at("None") is None
