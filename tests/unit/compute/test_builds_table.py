"""builds.InstanceTable: per-instance locks, admission, tombstones (pure, threads only)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from agents.compute.builds import InstanceTable
from agents.compute.waiter import VifWaiter
from common.messages import BuildInstance, InstanceSpec


def _msg(iid: uuid.UUID) -> BuildInstance:
    spec = InstanceSpec(uuid=iid, name="a", flavor="m1.tiny", image="tiny")
    return BuildInstance(request_id="req-1", host="h", instance=spec)


def test_one_instance_is_never_held_by_two_threads() -> None:
    table = InstanceTable()
    iid = uuid.uuid4()
    inside = 0
    worst = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, worst
        for _ in range(200):
            with table.locked(iid):
                with guard:
                    inside += 1
                    worst = max(worst, inside)
                time.sleep(0)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert worst == 1
    assert table._locks == {}  # nothing kept once nobody holds or waits


def test_admission_duplicate_and_tombstone() -> None:
    table = InstanceTable()
    waiter = VifWaiter()
    iid = uuid.uuid4()
    task = table.admit(_msg(iid), 0.0, waiter)
    assert not isinstance(task, str)
    assert table.admit(_msg(iid), 0.0, waiter) == "duplicate"
    assert table.tombstone(iid) is task
    table.finish(task)
    assert table.get(iid) is None and task.done.is_set()
    assert table.admit(_msg(iid), 0.0, waiter) == "deleted"
    assert table.snapshot()["building"] == 0


def test_tombstones_expire() -> None:
    now = [0.0]
    table = InstanceTable(clock=lambda: now[0])
    old, new = uuid.uuid4(), uuid.uuid4()
    table.tombstone(old)
    now[0] = 4000.0
    table.tombstone(new)
    waiter = VifWaiter()
    assert not isinstance(table.admit(_msg(old), 0.0, waiter), str)
    assert table.admit(_msg(new), 0.0, waiter) == "deleted"


def test_tombstones_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tombstones.json"
    gone = uuid.uuid4()
    InstanceTable(tombstones=path).tombstone(gone)
    again = InstanceTable(tombstones=path)  # a new process on the same state dir
    spec = InstanceSpec(uuid=gone, name="x", flavor="m1.tiny", image="tiny")
    build = BuildInstance(request_id="req-stale", host="h", instance=spec)
    assert again.admit(build, 0.0, VifWaiter(retention=10)) == "deleted"
