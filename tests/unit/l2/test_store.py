from __future__ import annotations

import uuid
from pathlib import Path

from agents.l2.store import PortRecord, PortStore, Wanted, now
from common.messages import Port

NET = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")


def record(wanted: Wanted = "present") -> PortRecord:
    port = Port(id=uuid.uuid4(), network_id=NET, mac="fa:16:3e:00:00:01")
    return PortRecord(
        port_id=port.id,
        network_id=NET,
        wanted=wanted,
        port=port if wanted == "present" else None,
        updated_at=now(),
    )


def test_put_load_remove_round_trip(tmp_path: Path) -> None:
    store = PortStore(tmp_path / "ports")
    a, b = record(), record("absent")
    store.put(a)
    store.put(b)
    assert PortStore(tmp_path / "ports").load() == {a.port_id: a, b.port_id: b}
    store.remove(a.port_id)
    store.remove(a.port_id)  # removing twice is fine
    assert set(store.load()) == {b.port_id}
    store.close()


def test_a_write_cut_short_leaves_the_previous_record(tmp_path: Path) -> None:
    store = PortStore(tmp_path)
    old = record()
    store.put(old)
    # What kill -9 between write() and rename() leaves: a partial temporary file.
    (tmp_path / f".{old.port_id}.json.123.tmp").write_text('{"port_id": "')
    assert store.load() == {old.port_id: old}
    assert not list(tmp_path.glob("*.tmp"))  # cleaned up


def test_an_unreadable_record_is_set_aside_not_fatal(tmp_path: Path) -> None:
    store = PortStore(tmp_path)
    good = record()
    store.put(good)
    bad = tmp_path / f"{uuid.uuid4()}.json"
    bad.write_text("{not json")
    assert store.load() == {good.port_id: good}
    assert bad.with_suffix(".corrupt").exists()


def test_no_temporary_file_survives_a_put(tmp_path: Path) -> None:
    store = PortStore(tmp_path)
    for _ in range(5):
        store.put(record())
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json"] * 5


def test_flush_waits_for_the_batched_sync_and_close_stops_the_flusher(tmp_path: Path) -> None:
    store = PortStore(tmp_path)
    for _ in range(20):
        store.put(record())
    assert store.flush(5)
    store.remove(next(iter(store.load())))
    store.close()
    assert len(PortStore(tmp_path).load()) == 19
