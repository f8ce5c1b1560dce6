"""The journal on a real file system: entries survive a new process, damage is set aside."""

from __future__ import annotations

from pathlib import Path

from common.journal import Journal


def test_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    a = j.add("port_created", "p1", {"n": 1})
    j.add("port_deleted", "p1", {"n": 2})
    j.add("port_created", "p2", {"n": 3})
    j.done(a)
    j.close()
    again = Journal(tmp_path)  # as a restarted agent would open it
    assert [(e.method, e.key, e.body["n"]) for e in again.pending()] == [
        ("port_deleted", "p1", 2),
        ("port_created", "p2", 3),
    ]
    assert len(again) == 2


def test_half_written_and_damaged_entries(tmp_path: Path) -> None:
    Journal(tmp_path).add("m", "k", {"ok": True})
    (tmp_path / ".tmp-00000000000000000001-000000-m.json").write_text('{"meth')  # no rename
    (tmp_path / "00000000000000000002-000000-m.json").write_text("not json")
    j = Journal(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))
    assert [e.body for e in j.pending()] == [{"ok": True}]
    assert (tmp_path / "damaged" / "00000000000000000002-000000-m.json").exists()


def test_done_twice_is_harmless(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    e = j.add("m", "k", {})
    j.done(e)
    j.done(e)
    assert j.pending() == []
