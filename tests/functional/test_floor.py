"""bench/floor.py at CI size: every part measured, the floor line printed, nothing left.

The bench makes an exchange and queues on the real broker, a scratch PostgreSQL
database and a network namespace of its own; all of them must be gone afterwards,
whether it passed or not. Its figures are the closing note's (docs/operations.md).
"""

from __future__ import annotations

import re
import subprocess

import pytest
import sqlalchemy as sa

from tests.functional.conftest import run_bench

pytestmark = pytest.mark.functional

PART = re.compile(
    r"^FLOOR part=(?P<part>\w+) ms_per_build=(?P<ms>[\d.]+)(?P<where>( \w+_ms=[\d.]+)+)$"
)
TOTAL = re.compile(
    r"^FLOOR total ms_per_build=(?P<total>[\d.]+) without_disk=(?P<no_disk>[\d.]+)"
    r" cores=(?P<cores>\d+) max_builds_per_s=(?P<max>\d+)"
    r" max_builds_per_s_without_disk=(?P<max_no_disk>\d+) target=300"
    r" needs_ms_per_build<=(?P<budget>[\d.]+)$"
)
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PARTS = ["casts", "events", "journal", "database", "netlink", "hypervisor", "disk"]


def _leftovers() -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line for line in netns.splitlines() if line.startswith("floor-")]
    for what in ("queues", "exchanges"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", f"list_{what}", "name"], capture_output=True, text=True
        ).stdout
        found += [f"{what}: {n}" for n in out.split() if n.startswith("floor-")]
    engine = sa.create_engine(PG_ADMIN)
    try:
        with engine.connect() as conn:
            dbs = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
    finally:
        engine.dispose()
    found += [f"database: {n}" for n in dbs if n.startswith("floor_")]
    return found


def test_every_part_is_measured_and_nothing_is_left_behind(root: None) -> None:
    before = _leftovers()
    proc = run_bench("floor.py", "-n", "200", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    parts = {m["part"]: m for m in map(PART.match, lines) if m}
    assert list(parts) == PARTS, proc.stdout
    for name, match in parts.items():
        where = dict(kv.split("=") for kv in match["where"].split())
        assert float(match["ms"]) > 0, match.group(0)
        assert abs(sum(map(float, where.values())) - float(match["ms"])) < 0.01, match.group(0)
        if name in ("casts", "events"):
            assert "broker_ms" in where, match.group(0)
        if name == "disk":
            assert "children_ms" in where, match.group(0)  # qemu-img's own CPU counts
    total = next((m for m in map(TOTAL.match, lines) if m), None)
    assert total is not None, proc.stdout
    summed = sum(float(m["ms"]) for m in parts.values())
    assert abs(float(total["total"]) - summed) < 0.05, (total.group(0), summed)
    assert float(total["no_disk"]) < float(total["total"])
    assert _leftovers() == before
