"""The record of agents seen: merge keeps the newest, the file survives damage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from agents.ctl.seen import SeenStore, key, merge
from common.messages import AgentHeartbeat, utcnow


def hb(host: str, kind: str = "compute", age: float = 0.0, version: str = "1") -> AgentHeartbeat:
    now = utcnow()
    return AgentHeartbeat(
        host=host,
        kind=kind,
        version=version,
        started_at=now,
        uptime_s=3.0,
        at=now - timedelta(seconds=age),
    )


def test_merge_keeps_the_newest_heartbeat_per_agent() -> None:
    old = {key("compute", "a"): hb("a", age=60, version="old")}
    merged = merge(old, [hb("a", version="new"), hb("a", kind="l2"), hb("b", age=120)])
    assert merged[key("compute", "a")].version == "new"
    assert set(merged) == {"compute:a", "l2:a", "compute:b"}
    assert merge(merged, [hb("a", age=600, version="stale")])["compute:a"].version == "new"


def test_store_round_trip_and_damage(tmp_path: Path) -> None:
    store = SeenStore(tmp_path / "state", "ex1")
    assert store.load() == {}
    record = merge({}, [hb("a"), hb("b", kind="l2")])
    store.save(record)
    assert store.load() == record
    assert SeenStore(tmp_path / "state", "ex2").load() == {}  # one file per deployment
    store.path.write_text("{not json")
    assert store.load() == {}
    store.path.write_text(
        '{"compute:a": {"host": "a"}, "l2:b": ' + record["l2:b"].model_dump_json() + "}"
    )
    assert list(store.load()) == ["l2:b"]  # a bad entry is dropped, the good one kept
